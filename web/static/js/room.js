// One room as the client sees it: current state, a chronological timeline, local echoes,
// aggregated relations (edits m.replace, reactions m.annotation), redactions, receipts, typing.

export const SHOWN_TYPES = new Set(['m.room.message', 'm.room.member', 'm.room.create',
  'm.room.name', 'm.room.topic', 'm.room.encrypted', 'm.sticker']);

const skey = (type, key) => `${type}\u0000${key}`;

export function relation(ev) {
  const rel = ev?.content?.['m.relates_to'];
  return rel && typeof rel === 'object' ? rel : null;
}

export function isEdit(ev) {
  return ev.type === 'm.room.message' && relation(ev)?.rel_type === 'm.replace'
    && typeof relation(ev).event_id === 'string';
}

export function isRedacted(ev) { return !!ev.unsigned?.redacted_because; }

export function redactsId(ev) { return ev.redacts || ev.content?.redacts; }

export class Room {
  constructor(id) {
    this.id = id;
    this.membership = 'join';
    this.state = new Map();
    this.timeline = [];
    this.pending = [];
    this.byId = new Map();
    this.prevBatch = null;
    this.historyDone = false;
    this.receipts = new Map(); // userId -> {eventId, ts}
    this.typing = [];
    this.accountData = new Map();
    this.edits = new Map(); // target event id -> latest edit event
    this.reactions = new Map(); // target id -> Map(key -> Map(sender -> reaction event id))
    this.versions = new Map(); // event id -> render version (bumped by aggregations)
    this.summary = {};
    this.inviteState = [];
    this.inviter = null;
    // The server's unread_notifications (push rules applied): {notifications, highlights}.
    this.serverUnread = null;
    this.version = 0; // bumped on every change (for cheap "did anything change" checks)
  }

  // --- state ------------------------------------------------------------------------------

  getState(type, key = '') { return this.state.get(skey(type, key)) || null; }

  setState(ev) { this.state.set(skey(ev.type, ev.state_key), ev); }

  members(membership = 'join') {
    const out = [];
    for (const ev of this.state.values()) {
      if (ev.type === 'm.room.member' && (!membership || ev.content?.membership === membership)) {
        out.push({ userId: ev.state_key, membership: ev.content.membership,
          name: ev.content.displayname || null, avatar: ev.content.avatar_url || null });
      }
    }
    return out;
  }

  memberName(userId) {
    const ev = this.getState('m.room.member', userId);
    const name = ev?.content?.displayname;
    if (typeof name === 'string' && name.trim()) return name;
    const inv = this.inviteState.find((e) => e.type === 'm.room.member' && e.state_key === userId);
    if (inv?.content?.displayname) return inv.content.displayname;
    return userId.startsWith('@') ? userId.slice(1).split(':')[0] : userId;
  }

  memberAvatar(userId) {
    return this.getState('m.room.member', userId)?.content?.avatar_url || null;
  }

  powerLevel(userId) {
    const pl = this.getState('m.room.power_levels')?.content || {};
    return pl.users?.[userId] ?? pl.users_default ?? 0;
  }

  canRedactOthers(userId) {
    const pl = this.getState('m.room.power_levels')?.content || {};
    return this.powerLevel(userId) >= (pl.redact ?? 50);
  }

  /** The other people in the room (joined, then invited), for naming DMs. */
  heroes(me) {
    const ids = new Set(this.summary['m.heroes'] || []);
    for (const m of this.members('join')) ids.add(m.userId);
    for (const m of this.members('invite')) ids.add(m.userId);
    ids.delete(me);
    return [...ids];
  }

  name(me) {
    const stateFrom = (type) => this.getState(type)?.content
      || this.inviteState.find((e) => e.type === type)?.content;
    const n = stateFrom('m.room.name')?.name;
    if (typeof n === 'string' && n.trim()) return n.trim();
    const alias = stateFrom('m.room.canonical_alias')?.alias;
    if (typeof alias === 'string' && alias) return alias;
    if (this.membership === 'invite' && this.inviter) return this.memberName(this.inviter);
    const heroes = this.heroes(me).slice(0, 3).map((u) => this.memberName(u));
    if (heroes.length) return heroes.join(', ');
    return null;
  }

  topic() {
    const c = this.getState('m.room.topic')?.content
      || this.inviteState.find((e) => e.type === 'm.room.topic')?.content;
    return typeof c?.topic === 'string' ? c.topic : '';
  }

  avatarMxc(me, isDirect) {
    const a = this.getState('m.room.avatar')?.content?.url;
    if (a) return a;
    if (isDirect) {
      const other = this.heroes(me)[0];
      if (other) return this.memberAvatar(other);
    }
    return null;
  }

  // --- timeline ---------------------------------------------------------------------------

  bump(id) {
    this.versions.set(id, (this.versions.get(id) || 0) + 1);
  }

  /** Forward events (from sync): state applies, relations aggregate, the rest is shown. */
  addLive(events) {
    const added = [];
    for (const ev of events) {
      if (this.byId.has(ev.event_id)) continue;
      if (ev.state_key !== undefined) this.setState(ev);
      this._remember(ev);
      if (this._aggregate(ev)) continue;
      this.timeline.push(ev);
      added.push(ev);
    }
    this.version += 1;
    return added;
  }

  /** Older events (from /messages, newest first): prepended, state untouched. */
  addHistory(chunk) {
    const older = [];
    for (const ev of chunk) {
      if (this.byId.has(ev.event_id)) continue;
      this._remember(ev);
      if (ev.type === 'm.room.create') this.historyDone = true;
      if (this._aggregate(ev)) continue;
      older.push(ev);
    }
    older.reverse();
    this.timeline = older.concat(this.timeline);
    this.version += 1;
    return older;
  }

  /** A gap ("limited" sync): drop what we had; history is paginated again from here. */
  resetTimeline(prevBatch) {
    this.timeline = [];
    this.byId = new Map();
    this.edits = new Map();
    this.reactions = new Map();
    this.prevBatch = prevBatch;
    this.historyDone = false;
    this.version += 1;
  }

  _remember(ev) {
    this.byId.set(ev.event_id, ev);
    if (ev.unsigned?.transaction_id) {
      this.pending = this.pending.filter((p) => p.txnId !== ev.unsigned.transaction_id);
    }
    // Also by the ID the send returned, should the event come back without a transaction ID.
    this.pending = this.pending.filter((p) => p.event_id !== ev.event_id && p.sentId !== ev.event_id);
  }

  /** Relations and redactions change other events; true when `ev` itself is not shown. */
  _aggregate(ev) {
    if (ev.type === 'm.room.redaction') {
      const target = this.byId.get(redactsId(ev));
      if (target) this._applyRedaction(target, ev);
      return true;
    }
    if (ev.type === 'm.reaction') {
      const rel = relation(ev);
      if (rel?.rel_type === 'm.annotation' && rel.event_id && typeof rel.key === 'string'
          && !isRedacted(ev)) {
        let keys = this.reactions.get(rel.event_id);
        if (!keys) this.reactions.set(rel.event_id, (keys = new Map()));
        let senders = keys.get(rel.key);
        if (!senders) keys.set(rel.key, (senders = new Map()));
        senders.set(ev.sender, ev.event_id);
        this.bump(rel.event_id);
      }
      return true;
    }
    if (isEdit(ev)) {
      if (!isRedacted(ev)) {
        const target = relation(ev).event_id;
        const prev = this.edits.get(target);
        if (!prev || prev.origin_server_ts <= ev.origin_server_ts) this.edits.set(target, ev);
        this.bump(target);
      }
      return true;
    }
    return false;
  }

  _applyRedaction(target, redaction) {
    const rel = relation(target);
    if (target.type === 'm.reaction' && rel?.event_id) {
      const senders = this.reactions.get(rel.event_id)?.get(rel.key);
      if (senders && senders.get(target.sender) === target.event_id) senders.delete(target.sender);
      if (senders && !senders.size) this.reactions.get(rel.event_id).delete(rel.key);
      this.bump(rel.event_id);
    } else if (isEdit(target)) {
      const orig = rel.event_id;
      if (this.edits.get(orig) === target) {
        this.edits.delete(orig);
        for (const e of this.byId.values()) { // fall back to an earlier edit, if any
          if (e !== target && isEdit(e) && relation(e).event_id === orig && !isRedacted(e)) {
            const cur = this.edits.get(orig);
            if (!cur || cur.origin_server_ts <= e.origin_server_ts) this.edits.set(orig, e);
          }
        }
      }
      this.bump(orig);
    }
    target.content = {};
    target.unsigned = { ...(target.unsigned || {}), redacted_because: redaction };
    this.bump(target.event_id);
  }

  /** The content to display: the latest valid edit's m.new_content, else the original. */
  displayContent(ev) {
    if (isRedacted(ev)) return null;
    const edit = this.edits.get(ev.event_id);
    if (edit && edit.sender === ev.sender && edit.content?.['m.new_content']) {
      return { ...edit.content['m.new_content'], 'm.relates_to': ev.content['m.relates_to'] };
    }
    return ev.content;
  }

  isEdited(ev) {
    const edit = this.edits.get(ev.event_id);
    return !!edit && edit.sender === ev.sender;
  }

  reactionsFor(eventId) { return this.reactions.get(eventId) || new Map(); }

  /** Events a person sees: shown types, plus local echoes at the end. */
  shownEvents() {
    const out = this.timeline.filter((e) => SHOWN_TYPES.has(e.type));
    return out.concat(this.pending);
  }

  lastEvent() {
    for (let i = this.timeline.length - 1; i >= 0; i -= 1) {
      const e = this.timeline[i];
      if (e.type === 'm.room.message' || e.type === 'm.room.encrypted' || e.type === 'm.sticker') {
        return e;
      }
    }
    return null;
  }

  lastActivity() {
    const last = this.timeline[this.timeline.length - 1];
    if (last) return last.origin_server_ts;
    const create = this.getState('m.room.create');
    return create?.origin_server_ts || 0;
  }

  // --- receipts, unread -------------------------------------------------------------------

  setReceipt(userId, eventId, ts) {
    const prev = this.receipts.get(userId);
    if (prev) this.bump(prev.eventId);
    this.receipts.set(userId, { eventId, ts });
    this.bump(eventId);
  }

  /** Index in `timeline` after which messages count as unread for `me`. */
  readIndex(me) {
    const rid = this.receipts.get(me)?.eventId;
    // A receipt on an event not shown in the timeline (a reaction, an edit): read up to its time.
    const hidden = rid && this.byId.get(rid);
    const upto = hidden && !this.timeline.includes(hidden) ? hidden.origin_server_ts : -1;
    for (let i = this.timeline.length - 1; i >= 0; i -= 1) {
      const e = this.timeline[i];
      if (e.event_id === rid || e.sender === me || e.origin_server_ts <= upto) return i;
    }
    return -1;
  }

  setServerUnread(counts) {
    const n = Number.isInteger(counts?.notification_count) ? counts.notification_count : 0;
    const hl = Number.isInteger(counts?.highlight_count) ? counts.highlight_count : 0;
    if (this.serverUnread?.notifications === n && this.serverUnread?.highlights === hl) return;
    this.serverUnread = { notifications: n, highlights: hl };
    this.version += 1;
  }

  /** Messages from others after the read position, counted in the loaded timeline; `known`
   * when the read position (or the start of the room) is loaded, so the count is exact. */
  localUnread(me) {
    const from = this.readIndex(me);
    let count = 0;
    for (let i = from + 1; i < this.timeline.length; i += 1) {
      const e = this.timeline[i];
      if (e.sender !== me && (e.type === 'm.room.message' || e.type === 'm.room.encrypted')
          && !isRedacted(e)) count += 1;
    }
    return { count, known: from >= 0 || this.historyDone };
  }

  /** {count, highlights, more}: the server's counts (what notifies under the user's push
   * rules). A read receipt this client just sent lowers them at once when the loaded timeline
   * shows it; the server's next sync says the same. Without server counts, a local estimate
   * (`more`: older messages were not loaded). */
  unread(me) {
    const local = this.localUnread(me);
    if (!this.serverUnread) {
      const more = !local.known && local.count > 0 && !!this.prevBatch;
      return { count: local.count, highlights: 0, more };
    }
    let count = this.serverUnread.notifications;
    if (local.known) count = Math.min(count, local.count);
    return { count, highlights: Math.min(this.serverUnread.highlights, count), more: false };
  }
}
