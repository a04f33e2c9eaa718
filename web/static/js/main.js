// Entry point: language, session, realtime stream, and which screen shows.
import { Api } from './api.js';
import { ctx } from './ctx.js';
import { clear } from './dom.js';
import { Drafts } from './drafts.js';
import { detectLanguage, setLanguage, t } from './i18n.js';
import { maybeNotify } from './notify.js';
import { Realtime } from './realtime.js';
import { Router } from './router.js';
import { Settings, SETTINGS_TYPE, applyTheme } from './settings.js';
import { Store } from './store.js';
import { toast } from './ui.js';
import { renderAuth } from './views/auth.js';
import { mountShell } from './views/shell.js';

const SESSION_KEY = 'nexa.session';
const root = document.getElementById('app');
let shell = null;
let unroute = null;

function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    return s && s.accessToken && s.userId ? s : null;
  } catch {
    return null;
  }
}

function saveSession(s) { localStorage.setItem(SESSION_KEY, JSON.stringify(s)); }

function showAuth() {
  unroute?.();
  shell = null;
  const route = ctx.router.current();
  const mode = route.name === 'register' ? 'register' : 'login';
  if (route.name !== mode) ctx.router.go(mode, true);
  unroute = ctx.router.onChange((r) => {
    if (r.name === 'login' || r.name === 'register') renderAuth(root, r.name, onLoggedIn);
  });
  renderAuth(root, mode, onLoggedIn);
}

function onLoggedIn(res) {
  const session = { userId: res.user_id, accessToken: res.access_token, deviceId: res.device_id };
  saveSession(session);
  startSession(session, true);
}

function startSession(session, fresh = false) {
  unroute?.();
  const api = new Api(session);
  ctx.api = api;
  ctx.store = new Store(api);
  ctx.settings = new Settings();
  ctx.drafts = new Drafts(session.userId);
  api.onUnauthorized = () => endSession(t('error.session_ended'));
  ctx.store.addEventListener('change', (e) => {
    const d = e.detail;
    if (d.accountData.has(SETTINGS_TYPE)) ctx.settings.load(ctx.store.accountData.get(SETTINGS_TYPE));
    if (d.initial && !ctx.store.accountData.has(SETTINGS_TYPE)) ctx.settings.load({});
    for (const { room, event } of d.newEvents) maybeNotify(room, event);
  });
  shell = mountShell(root);
  ctx.rt = new Realtime({
    token: session.accessToken,
    since: null,
    // A longer first timeline page makes unread counts and previews right from the start.
    filter: { room: { timeline: { limit: 30 } } },
    // Acknowledged pushes: each sync is computed from the last one we applied, as this device.
    ack: true,
    onSync: (body) => ctx.store.applySync(body),
    onStatus: (s) => shell?.setConnection(s),
    onAuthError: () => endSession(t('error.session_ended')),
  });
  ctx.rt.start();
  if (fresh || ['login', 'register', ''].includes(ctx.router.current().name)) ctx.router.go('', true);
  unroute = ctx.router.onChange((r) => shell?.route(r));
  shell.route(ctx.router.current());
}

export async function logout() {
  ctx.drafts?.destroy();
  try { await ctx.api.logout(); } catch { /* the token is dropped either way */ }
  endSession(null);
}

function endSession(message) {
  ctx.rt?.stop();
  ctx.drafts?.destroy();
  shell?.destroy();
  shell = null;
  localStorage.removeItem(SESSION_KEY);
  Object.assign(ctx, { api: null, store: null, rt: null, drafts: null, openRoomId: null });
  clear(root);
  ctx.router.go('login', true);
  showAuth();
  if (message) toast(message, 'error', 8000);
}

async function boot() {
  applyTheme(localStorage.getItem('nexa.theme') || 'auto');
  try {
    await setLanguage(localStorage.getItem('nexa.lang') || detectLanguage());
  } catch (e) {
    console.error(e); // eslint-disable-line no-console
  }
  ctx.router = new Router();
  ctx.logout = logout;
  const session = loadSession();
  if (session) startSession(session); else showAuth();
}

boot();
