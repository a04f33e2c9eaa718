// Browser notifications for direct messages and mentions (settings.notifications), never for
// muted rooms, own messages, or the room being read in a visible window.
import { ctx } from './ctx.js';
import { localpart, stripReplyFallback } from './format.js';
import { t } from './i18n.js';
import { assetUrl } from './assets.js';

export function notificationsSupported() { return 'Notification' in window; }

export async function requestPermission() {
  if (!notificationsSupported()) return 'unsupported';
  if (Notification.permission === 'default') return Notification.requestPermission();
  return Notification.permission;
}

export function mentionsMe(ev, room) {
  const me = ctx.store.me;
  const ids = ev.content?.['m.mentions']?.user_ids;
  if (Array.isArray(ids) && ids.includes(me)) return true;
  const body = String(ev.content?.body || '').toLowerCase();
  if (!body) return false;
  const names = [me.toLowerCase(), localpart(me).toLowerCase(), room.memberName(me).toLowerCase()];
  return names.some((n) => n.length >= 2
    && new RegExp(`(^|[^\\p{L}\\p{N}_])${n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}($|[^\\p{L}\\p{N}_])`, 'u').test(body));
}

export function maybeNotify(room, ev) {
  const s = ctx.settings.get('notifications');
  if (!s.enabled || !notificationsSupported() || Notification.permission !== 'granted') return;
  if (ev.sender === ctx.store.me || ctx.settings.isMuted(room.id)) return;
  if (ev.type !== 'm.room.message' && !(ev.type === 'm.room.member' && ev.state_key === ctx.store.me)) return;
  if (ctx.openRoomId === room.id && document.visibilityState === 'visible' && document.hasFocus()) return;
  const direct = ctx.store.isDirect(room);
  const mention = ev.type === 'm.room.message' && mentionsMe(ev, room);
  if (!((direct && s.direct) || (mention && s.mentions))) return;
  const roomName = ctx.store.roomName(room);
  const sender = room.memberName(ev.sender);
  const title = direct ? sender : t('notify.in_room', { sender, room: roomName });
  const body = ev.type === 'm.room.member' ? t('notify.invited')
    : stripReplyFallback(String(ev.content?.body || '')).slice(0, 200);
  try {
    const n = new Notification(title, { body, tag: room.id, icon: assetUrl('img/icon.svg') });
    n.onclick = () => { window.focus(); ctx.router.go(`room/${encodeURIComponent(room.id)}`); n.close(); };
  } catch { /* some browsers only allow notifications from a service worker */ }
}
