// The sidebar: who I am, new chat buttons, a filter, invites, and conversations ordered by
// activity with unread counts and a preview of the last message. Arrow keys move between rooms.
import { ctx } from '../ctx.js';
import { h, reconcile, replace } from '../dom.js';
import { shortStamp, stripReplyFallback } from '../format.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { isRedacted } from '../room.js';
import { avatar } from '../ui.js';
import { newDirectChat, newGroup } from './dialogs.js';

export function previewText(room, ev) {
  if (!ev) return '';
  const me = ctx.store.me;
  let text;
  if (isRedacted(ev)) text = t('msg.deleted');
  else {
    const c = room.displayContent(ev) || {};
    if (ev.type === 'm.room.encrypted') text = t('msg.encrypted');
    else if (c.msgtype === 'm.image') text = t('msg.image');
    else if (c.msgtype === 'm.file' || c.msgtype === 'm.video' || c.msgtype === 'm.audio') {
      text = t('msg.file_named', { name: c.body || '' });
    } else text = stripReplyFallback(String(c.body || '')).replace(/\s+/g, ' ');
  }
  if (ev.sender === me) return t('list.you', { text });
  if (!ctx.store.isDirect(room)) return `${room.memberName(ev.sender)}: ${text}`;
  return text;
}

export function mountRoomList(container) {
  let selected = null;
  let filterText = '';
  let kind = 'all';
  const cache = new Map();
  const inviteCache = new Map();
  const me = ctx.store.me;

  const ul = h('ul', { class: 'room-list', 'aria-label': t('list.rooms') });
  const invitesUl = h('ul', { class: 'room-list invites', 'aria-label': t('list.invites') });
  const invitesSection = h('section', { class: 'invites-section', hidden: true },
    h('h2', { class: 'list-heading' }, t('list.invites')), invitesUl);
  const status = h('p', { class: 'list-status', role: 'status' });
  const filter = h('input', { type: 'search', class: 'filter-input', placeholder: t('list.filter'),
    'aria-label': t('list.filter'), oninput: (e) => { filterText = e.target.value.toLowerCase(); render(); } });
  const tabs = h('div', { class: 'tabs', role: 'group', 'aria-label': t('list.kind') },
    ['all', 'direct', 'groups'].map((k) => h('button', { type: 'button', class: 'tab',
      'aria-pressed': String(k === kind), dataset: { kind: k }, onclick: () => {
        kind = k;
        for (const b of tabs.children) b.setAttribute('aria-pressed', String(b.dataset.kind === kind));
        render();
      } }, t(`list.kind_${k}`))));
  const meBtn = h('a', { class: 'me', href: '#/profile', 'aria-label': t('nav.profile') });
  const head = h('header', { class: 'sidebar-head' }, meBtn,
    h('div', { class: 'head-actions' },
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('list.new_direct'),
        title: t('list.new_direct'), onclick: newDirectChat }, icon('chat')),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('list.new_group'),
        title: t('list.new_group'), onclick: newGroup }, icon('users'))));
  const nav = h('nav', { class: 'side-nav', 'aria-label': t('nav.main') },
    [['explore', 'compass', 'nav.explore'], ['settings', 'settings', 'nav.settings'],
      ['help', 'help', 'nav.help']].map(([route, ic, label]) => h('a', { href: `#/${route}`,
      class: 'side-nav-link', dataset: { route } }, icon(ic), h('span', {}, t(label)))));
  const scroller = h('div', { class: 'sidebar-scroll' }, invitesSection, ul, status);
  replace(container, head, h('div', { class: 'sidebar-tools' }, filter, tabs), scroller, nav);

  const renderMe = () => {
    const ev = [...ctx.store.rooms.values()].map((r) => r.getState('m.room.member', me))
      .find((e) => e?.content?.displayname);
    const name = ev?.content?.displayname || me.slice(1).split(':')[0];
    replace(meBtn, avatar(me, name, ev?.content?.avatar_url || null, 'sm'),
      h('span', { class: 'me-text' }, h('span', { class: 'me-name' }, name),
        h('span', { class: 'me-id' }, me)));
  };

  const item = (room) => {
    const isInvite = room.membership === 'invite';
    const direct = ctx.store.isDirect(room);
    const name = ctx.store.roomName(room);
    const last = room.lastEvent();
    const preview = isInvite ? t('list.invited_by', { name: room.memberName(room.inviter || '') })
      : previewText(room, last);
    const { count, more, highlights } = isInvite ? { count: 0, more: false, highlights: 0 }
      : room.unread(me);
    const muted = ctx.settings.isMuted(room.id);
    const ts = isInvite ? room.inviteTs : (last?.origin_server_ts || room.lastActivity());
    const sel = room.id === selected;
    const partner = direct ? ctx.store.directPartner(room) : null;
    const version = [name, preview, count, more, highlights, muted, ts, sel, direct,
      room.avatarMxc(me, direct)].join('|');
    return { key: room.id, version, build: () => {
      // Mentions and other highlights stand out, even in a muted conversation.
      const badge = count ? h('span', { class: ['badge', highlights ? 'badge-highlight'
        : muted && 'badge-muted'], 'aria-label': highlights
        ? `${t('list.unread', { count })}, ${t('list.mentions', { count: highlights })}`
        : t('list.unread', { count }) }, more ? `${count}+` : String(count)) : null;
      return h('li', { class: 'room-item-wrap' }, h('a', {
        class: ['room-item', sel && 'selected', count && 'unread', isInvite && 'invite'],
        href: `#/room/${encodeURIComponent(room.id)}`, 'aria-current': sel ? 'page' : null,
        dataset: { roomId: room.id } },
      avatar(partner || room.id, name, room.avatarMxc(me, direct)),
      h('span', { class: 'room-item-text' },
        h('span', { class: 'room-item-top' },
          h('span', { class: 'room-name' }, name),
          h('time', { class: 'room-time', datetime: ts ? new Date(ts).toISOString() : null }, shortStamp(ts))),
        h('span', { class: 'room-item-bottom' },
          h('span', { class: 'room-preview' }, preview || '\u00a0'),
          muted ? h('span', { class: 'muted-icon', title: t('room.muted') }, icon('bellOff')) : null,
          badge))));
    } };
  };

  const matches = (room) => {
    if (kind === 'direct' && !ctx.store.isDirect(room)) return false;
    if (kind === 'groups' && ctx.store.isDirect(room)) return false;
    return !filterText || ctx.store.roomName(room).toLowerCase().includes(filterText);
  };

  function render() {
    renderMe();
    const invites = ctx.store.invites().filter(matches);
    invitesSection.hidden = !invites.length;
    reconcile(invitesUl, invites.map(item), inviteCache);
    const rooms = ctx.store.joinedRooms().filter(matches);
    reconcile(ul, rooms.map(item), cache);
    if (!ctx.store.synced) status.textContent = t('list.loading');
    else if (!rooms.length && !invites.length) {
      status.textContent = filterText || kind !== 'all' ? t('list.no_match') : t('list.empty');
    } else status.textContent = '';
    const total = rooms.reduce((n, r) => n + r.unread(me).count, 0);
    document.title = total ? `(${total}) ${document.title.replace(/^\(\d+\) /, '')}`
      : document.title.replace(/^\(\d+\) /, '');
  }

  // Up/Down move between conversations; Home/End jump.
  scroller.addEventListener('keydown', (e) => {
    if (!['ArrowDown', 'ArrowUp', 'Home', 'End'].includes(e.key)) return;
    const links = [...scroller.querySelectorAll('a.room-item')];
    const i = links.indexOf(document.activeElement);
    if (i < 0) return;
    e.preventDefault();
    const next = e.key === 'Home' ? 0 : e.key === 'End' ? links.length - 1
      : Math.max(0, Math.min(links.length - 1, i + (e.key === 'ArrowDown' ? 1 : -1)));
    links[next].focus();
  });

  // Coalesce bursts of changes (a timer, not requestAnimationFrame: the unread count in the
  // title should update in a background tab too).
  let frame = 0;
  const onChange = () => {
    if (frame) return;
    frame = setTimeout(() => { frame = 0; render(); }, 16);
  };
  ctx.store.addEventListener('change', onChange);
  const offSettings = ctx.settings.onChange(onChange);
  render();

  return {
    setSelected(roomId, routeName) {
      selected = roomId;
      for (const a of nav.querySelectorAll('a')) {
        if (a.dataset.route === routeName) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      render();
    },
    destroy() {
      ctx.store.removeEventListener('change', onChange);
      offSettings();
      clearTimeout(frame);
    },
  };
}
