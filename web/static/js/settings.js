// User settings: account data "im.nexa.settings" (follows the user to every browser) with a
// local copy of the theme so the right colours paint before the app has loaded (boot.js).
// Privacy lives in "im.nexa.privacy", which the server enforces (search, invites).
import { ctx } from './ctx.js';
import { currentLanguage, detectLanguage, setLanguage } from './i18n.js';

export const SETTINGS_TYPE = 'im.nexa.settings';
export const PRIVACY_TYPE = 'im.nexa.privacy';

export const DEFAULTS = Object.freeze({
  theme: 'auto', // light | dark | auto (follows the system)
  language: null, // null: the browser's
  notifications: { enabled: false, direct: true, mentions: true },
  muted_rooms: [],
  send_receipts: true,
  send_typing: true,
});

export const PRIVACY_DEFAULTS = Object.freeze({ searchable: true, invite_policy: 'anyone' });

export function applyTheme(theme) {
  const value = ['light', 'dark', 'auto'].includes(theme) ? theme : 'auto';
  document.documentElement.dataset.theme = value;
  try { localStorage.setItem('nexa.theme', value); } catch { /* private mode */ }
}

export class Settings {
  constructor() {
    this.values = structuredClone(DEFAULTS);
    this.listeners = new Set();
  }

  load(content) {
    const c = content && typeof content === 'object' ? content : {};
    this.values = { ...structuredClone(DEFAULTS), ...c,
      notifications: { ...DEFAULTS.notifications, ...(c.notifications || {}) },
      muted_rooms: Array.isArray(c.muted_rooms) ? c.muted_rooms : [] };
    applyTheme(this.values.theme);
    const lang = this.values.language || localStorage.getItem('nexa.lang') || detectLanguage();
    if (this.values.language) {
      try { localStorage.setItem('nexa.lang', this.values.language); } catch { /* private mode */ }
    }
    const done = lang !== currentLanguage() ? setLanguage(lang) : Promise.resolve();
    return done.then(() => { for (const fn of this.listeners) fn(this.values); });
  }

  get(key) { return this.values[key]; }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async update(patch) {
    const next = { ...this.values, ...patch };
    await this.load(next);
    ctx.store?.accountData.set(SETTINGS_TYPE, next);
    await ctx.api.setAccountData(SETTINGS_TYPE, next);
  }

  isMuted(roomId) { return this.values.muted_rooms.includes(roomId); }

  async setMuted(roomId, muted) {
    const set = new Set(this.values.muted_rooms);
    if (muted) set.add(roomId); else set.delete(roomId);
    await this.update({ muted_rooms: [...set] });
    // A room push rule with no actions: the server stops counting the room's messages as
    // unread (mentions still highlight) and every client of this account sees it muted.
    const path = `/pushrules/global/room/${encodeURIComponent(roomId)}`;
    if (muted) await ctx.api.request('PUT', path, { body: { actions: [] } });
    else await ctx.api.request('DELETE', path).catch(() => { /* no rule: nothing to undo */ });
  }

  privacy() {
    const c = ctx.store?.accountData.get(PRIVACY_TYPE) || {};
    return { ...PRIVACY_DEFAULTS, ...c };
  }

  async setPrivacy(patch) {
    // Local first: a second change made before this one is stored must build on it.
    const next = { ...this.privacy(), ...patch };
    ctx.store?.accountData.set(PRIVACY_TYPE, next);
    await ctx.api.setAccountData(PRIVACY_TYPE, next);
  }
}
