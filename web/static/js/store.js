// Client state built from the realtime "sync" stream, and the actions that change it.
// Views listen for "change" events: detail = {rooms: Set<roomId>, accountData: Set<type>,
// newEvents: [{room, event}], initial: bool}.
import { txnId } from './api.js';
import { Room, relation } from './room.js';

export class Store extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.me = api.userId;
    this.rooms = new Map();
    this.accountData = new Map();
    this.presence = new Map();
    this.synced = false;
    this.eventCache = new Map();
  }

  room(id) { return this.rooms.get(id) || null; }

  _room(id) {
    let r = this.rooms.get(id);
    if (!r) this.rooms.set(id, (r = new Room(id)));
    return r;
  }

  emit(detail) {
    this.dispatchEvent(new CustomEvent('change', { detail: {
      rooms: new Set(), accountData: new Set(), newEvents: [], initial: false, ...detail } }));
  }

  // --- the sync stream ---------------------------------------------------------------------

  applySync(body) {
    const initial = !this.synced;
    const changed = new Set();
    const types = new Set();
    const newEvents = [];
    const rooms = body.rooms || {};
    for (const [id, data] of Object.entries(rooms.join || {})) {
      const room = this._room(id);
      const wasInvite = room.membership !== 'join';
      room.membership = 'join';
      room.inviteState = [];
      if (data.summary) room.summary = { ...room.summary, ...data.summary };
      for (const ev of data.state?.events || []) room.setState(ev);
      const tl = data.timeline || {};
      if (tl.limited && room.timeline.length) room.resetTimeline(tl.prev_batch);
      else if (!room.timeline.length && room.prevBatch === null) room.prevBatch = tl.prev_batch || null;
      if (wasInvite && !room.prevBatch) room.prevBatch = tl.prev_batch || null;
      const added = room.addLive(tl.events || []);
      if (!initial) for (const ev of added) newEvents.push({ room, event: ev });
      for (const ev of data.ephemeral?.events || []) this._ephemeral(room, ev);
      for (const ev of data.account_data?.events || []) room.accountData.set(ev.type, ev.content);
      if (data.unread_notifications) room.setServerUnread(data.unread_notifications);
      changed.add(id);
    }
    for (const [id, data] of Object.entries(rooms.invite || {})) {
      const room = this._room(id);
      room.membership = 'invite';
      room.inviteState = data.invite_state?.events || [];
      const mine = room.inviteState.find((e) => e.type === 'm.room.member' && e.state_key === this.me);
      room.inviter = mine?.sender || null;
      room.inviteIsDirect = !!mine?.content?.is_direct;
      room.inviteTs = mine?.origin_server_ts || Date.now();
      changed.add(id);
      if (!initial && mine) newEvents.push({ room, event: mine });
    }
    for (const id of Object.keys(rooms.leave || {})) {
      if (this.rooms.delete(id)) changed.add(id);
    }
    for (const ev of body.account_data?.events || []) {
      this.accountData.set(ev.type, ev.content);
      types.add(ev.type);
    }
    for (const ev of body.presence?.events || []) this.presence.set(ev.sender, ev.content);
    this.synced = true;
    this.emit({ rooms: changed, accountData: types, newEvents, initial });
  }

  _ephemeral(room, ev) {
    if (ev.type === 'm.typing') {
      room.typing = (ev.content?.user_ids || []).filter((u) => u !== this.me);
    } else if (ev.type === 'm.receipt') {
      for (const [eventId, byType] of Object.entries(ev.content || {})) {
        for (const type of ['m.read', 'm.read.private']) {
          if (type === 'm.read.private' && !byType[type]?.[this.me]) continue;
          for (const [userId, info] of Object.entries(byType[type] || {})) {
            if (type === 'm.read.private' && userId !== this.me) continue;
            room.setReceipt(userId, eventId, info?.ts || 0);
          }
        }
      }
    }
  }

  // --- rooms, ordered -------------------------------------------------------------------------

  directMap() {
    const c = this.accountData.get('m.direct');
    return c && typeof c === 'object' ? c : {};
  }

  isDirect(room) {
    if (room.membership === 'invite') return !!room.inviteIsDirect;
    for (const ids of Object.values(this.directMap())) {
      if (Array.isArray(ids) && ids.includes(room.id)) return true;
    }
    return false;
  }

  directPartner(room) {
    for (const [user, ids] of Object.entries(this.directMap())) {
      if (Array.isArray(ids) && ids.includes(room.id)) return user;
    }
    return room.inviter || room.heroes(this.me)[0] || null;
  }

  roomName(room) {
    return room.name(this.me) || (this.isDirect(room) && this.directPartner(room)) || '…';
  }

  joinedRooms() {
    return [...this.rooms.values()].filter((r) => r.membership === 'join')
      .sort((a, b) => b.lastActivity() - a.lastActivity());
  }

  invites() {
    return [...this.rooms.values()].filter((r) => r.membership === 'invite')
      .sort((a, b) => b.inviteTs - a.inviteTs);
  }

  findDirectRoomWith(userId) {
    const ids = this.directMap()[userId];
    if (!Array.isArray(ids)) return null;
    for (const id of ids) {
      const r = this.rooms.get(id);
      if (r && r.membership === 'join') return r;
    }
    return null;
  }

  async _addDirect(userId, roomId) {
    const map = { ...this.directMap() };
    const ids = new Set(Array.isArray(map[userId]) ? map[userId] : []);
    ids.add(roomId);
    map[userId] = [...ids];
    this.accountData.set('m.direct', map);
    await this.api.setAccountData('m.direct', map);
  }

  // --- actions -------------------------------------------------------------------------------

  async startDirectChat(userId) {
    const existing = this.findDirectRoomWith(userId);
    if (existing) return existing.id;
    const { room_id: roomId } = await this.api.createRoom({
      preset: 'trusted_private_chat', is_direct: true, invite: [userId],
    });
    await this._addDirect(userId, roomId);
    return roomId;
  }

  async createGroup({ name, topic, isPublic, invite }) {
    const body = { preset: isPublic ? 'public_chat' : 'private_chat', name, invite };
    if (topic) body.topic = topic;
    if (isPublic) body.visibility = 'public';
    const { room_id: roomId } = await this.api.createRoom(body);
    return roomId;
  }

  async acceptInvite(room) {
    await this.api.join(room.id);
    if (room.inviteIsDirect && room.inviter) await this._addDirect(room.inviter, room.id);
  }

  async declineInvite(room) {
    await this.api.leave(room.id);
    this.rooms.delete(room.id);
    this.emit({ rooms: new Set([room.id]) });
  }

  async leave(roomId) {
    await this.api.leave(roomId);
    this.rooms.delete(roomId);
    this.emit({ rooms: new Set([roomId]) });
  }

  /** Send with a local echo that the synced event replaces (matched by transaction ID). */
  sendMessage(roomId, content, type = 'm.room.message') {
    const room = this.room(roomId);
    const txn = txnId();
    const echo = { event_id: `~${txn}`, txnId: txn, type, content, sender: this.me,
      origin_server_ts: Date.now(), unsigned: { transaction_id: txn }, status: 'sending' };
    room.pending.push(echo);
    room.version += 1;
    this.emit({ rooms: new Set([roomId]) });
    return this._deliver(room, echo);
  }

  async _deliver(room, echo, attempt = 0) {
    try {
      const res = await this.api.send(room.id, echo.type, echo.content, echo.txnId);
      echo.status = 'sent';
      if (room.byId.has(res.event_id)) room.pending = room.pending.filter((p) => p !== echo);
      else echo.sentId = res.event_id;
    } catch (e) {
      if (e.errcode === 'M_LIMIT_EXCEEDED' && attempt < 3) {
        await new Promise((ok) => setTimeout(ok, e.retryAfterMs ?? 1000));
        return this._deliver(room, echo, attempt + 1);
      }
      echo.status = 'failed';
      echo.error = e;
    }
    room.bump(echo.event_id);
    room.version += 1;
    this.emit({ rooms: new Set([room.id]) });
    return echo;
  }

  retry(roomId, echo) {
    const room = this.room(roomId);
    echo.status = 'sending';
    room.bump(echo.event_id);
    this.emit({ rooms: new Set([roomId]) });
    return this._deliver(room, echo);
  }

  discard(roomId, echo) {
    const room = this.room(roomId);
    room.pending = room.pending.filter((p) => p !== echo);
    room.version += 1;
    this.emit({ rooms: new Set([roomId]) });
  }

  async toggleReaction(roomId, eventId, key) {
    const room = this.room(roomId);
    const mine = room.reactionsFor(eventId).get(key)?.get(this.me);
    if (mine) return this.api.redact(roomId, mine);
    return this.api.send(roomId, 'm.reaction', {
      'm.relates_to': { rel_type: 'm.annotation', event_id: eventId, key } });
  }

  editMessage(roomId, original, body) {
    const newContent = { msgtype: 'm.text', body };
    return this.api.send(roomId, 'm.room.message', {
      msgtype: 'm.text', body: `* ${body}`, 'm.new_content': newContent,
      'm.relates_to': { rel_type: 'm.replace', event_id: original.event_id },
    });
  }

  deleteMessage(roomId, eventId) { return this.api.redact(roomId, eventId); }

  /** One page of older history; false when there is nothing more. */
  async paginate(roomId, limit = 30) {
    const room = this.room(roomId);
    if (!room || room.historyDone || !room.prevBatch || room.paginating) return false;
    room.paginating = true;
    try {
      const res = await this.api.messages(roomId, room.prevBatch, limit);
      const chunk = res.chunk || [];
      for (const ev of res.state || []) {
        if (!room.getState(ev.type, ev.state_key)) room.setState(ev);
      }
      room.addHistory(chunk);
      room.prevBatch = res.end || null;
      if (!chunk.length || !res.end) room.historyDone = true;
      this.emit({ rooms: new Set([roomId]) });
      return !room.historyDone;
    } finally {
      room.paginating = false;
    }
  }

  /** An event that may not be loaded (the original of a reply): loaded or fetched once. */
  async fetchEvent(roomId, eventId) {
    const room = this.room(roomId);
    const have = room?.byId.get(eventId);
    if (have) return have;
    const key = `${roomId}|${eventId}`;
    if (!this.eventCache.has(key)) {
      this.eventCache.set(key, this.api.event(roomId, eventId).catch(() => null));
    }
    return this.eventCache.get(key);
  }

  /** Read receipt (public or private per the privacy setting) and the fully-read marker. */
  async markRead(roomId, eventId, isPrivate = false) {
    const room = this.room(roomId);
    if (!room || eventId.startsWith('~')) return;
    const current = room.receipts.get(this.me)?.eventId;
    if (current === eventId) return;
    room.setReceipt(this.me, eventId, Date.now());
    this.emit({ rooms: new Set([roomId]) });
    const markers = { 'm.fully_read': eventId };
    markers[isPrivate ? 'm.read.private' : 'm.read'] = eventId;
    try {
      await this.api.readMarkers(roomId, markers);
    } catch {
      await this.api.receipt(roomId, eventId, isPrivate ? 'm.read.private' : 'm.read');
    }
  }

  repliedTo(ev) { return relation(ev)?.['m.in_reply_to']?.event_id || null; }
}
