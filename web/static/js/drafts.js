// Drafts: what is typed in a room, kept per room. Written at once to localStorage (survives a
// reload even mid-debounce) and, debounced, to the room's account data "im.nexa.draft" (follows
// the user to another browser). The newer of the two (by ts) wins when a room opens.
import { ctx } from './ctx.js';

export const DRAFT_TYPE = 'im.nexa.draft';
const SAVE_DELAY_MS = 700;

export class Drafts {
  constructor(userId) {
    this.prefix = `nexa.draft.${userId}.`;
    this.timers = new Map();
    this.unsaved = new Map(); // roomId -> draft not yet in account data
    this.onHide = () => this.flushAll();
    window.addEventListener('pagehide', this.onHide);
  }

  /** On logout: save what is pending, then forget the local copies (they are on the server). */
  destroy() {
    this.flushAll();
    window.removeEventListener('pagehide', this.onHide);
    try {
      for (const key of Object.keys(localStorage)) if (key.startsWith(this.prefix)) localStorage.removeItem(key);
    } catch { /* storage disabled */ }
  }

  _local(roomId) {
    try { return JSON.parse(localStorage.getItem(this.prefix + roomId) || 'null'); } catch { return null; }
  }

  get(roomId) {
    const local = this._local(roomId);
    const remote = ctx.store?.room(roomId)?.accountData.get(DRAFT_TYPE) || null;
    const pick = !local ? remote : !remote ? local : (remote.ts || 0) > (local.ts || 0) ? remote : local;
    return pick && typeof pick.body === 'string' ? pick : { body: '', ts: 0 };
  }

  set(roomId, body, extra = {}) {
    const draft = { body, ts: Date.now(), ...extra };
    try { localStorage.setItem(this.prefix + roomId, JSON.stringify(draft)); } catch { /* full */ }
    this.unsaved.set(roomId, draft);
    clearTimeout(this.timers.get(roomId));
    this.timers.set(roomId, setTimeout(() => this._save(roomId), SAVE_DELAY_MS));
  }

  clear(roomId) { this.set(roomId, ''); this._save(roomId); }

  async _save(roomId) {
    clearTimeout(this.timers.get(roomId));
    this.timers.delete(roomId);
    const draft = this.unsaved.get(roomId);
    if (!draft) return;
    this.unsaved.delete(roomId);
    ctx.store?.room(roomId)?.accountData.set(DRAFT_TYPE, draft);
    const api = ctx.api;
    if (!api) return;
    const body = JSON.stringify(draft);
    const enc = encodeURIComponent;
    try {
      // keepalive: the save completes even when the page is closed or reloaded right after.
      await fetch(`/_matrix/client/v3/user/${enc(api.userId)}/rooms/${enc(roomId)}/account_data/${DRAFT_TYPE}`, {
        method: 'PUT', keepalive: body.length < 60000, body,
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${api.session.accessToken}` } });
    } catch { /* the local copy remains; the next edit retries */ }
  }

  flushAll() {
    for (const roomId of [...this.unsaved.keys()]) this._save(roomId);
  }
}
