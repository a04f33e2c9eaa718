// A room: header (name, members, mute, invite, leave), the timeline, who is typing, and the
// composer — or, for an invitation, a card to accept or decline it. Marks messages read while
// the newest one is on screen (public or private receipt, per the privacy setting).
import { ctx } from '../ctx.js';
import { h, replace } from '../dom.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { avatar, busy, confirmDialog, showError } from '../ui.js';
import { mountComposer } from './composer.js';
import { mountTimeline } from './timeline.js';
import { inviteDialog } from './dialogs.js';

function typingText(room) {
  const names = room.typing.map((u) => room.memberName(u));
  if (!names.length) return '';
  if (names.length === 1) return t('room.typing_one', { name: names[0] });
  if (names.length === 2) return t('room.typing_two', { a: names[0], b: names[1] });
  return t('room.typing_many', { count: names.length });
}

function inviteCard(main, room) {
  const name = ctx.store.roomName(room);
  const inviter = room.inviter ? room.memberName(room.inviter) : '';
  const accept = h('button', { type: 'button', class: 'btn btn-primary', onclick: () => busy(accept, async () => {
    await ctx.store.acceptInvite(room);
  }) }, t('invite.accept'));
  const decline = h('button', { type: 'button', class: 'btn', onclick: () => busy(decline, async () => {
    await ctx.store.declineInvite(room);
    ctx.router.go('');
  }) }, t('invite.decline'));
  replace(main, h('section', { class: 'empty-state invite-card', 'aria-labelledby': 'invite-title' },
    avatar(room.inviter || room.id, name, room.avatarMxc(ctx.store.me, room.inviteIsDirect), 'lg'),
    h('h1', { id: 'invite-title' }, room.inviteIsDirect ? t('invite.dm_title', { name: inviter || name })
      : t('invite.title', { room: name })),
    h('p', {}, inviter ? t('invite.from', { name: inviter, id: room.inviter }) : ''),
    room.topic() ? h('p', { class: 'muted' }, room.topic()) : null,
    h('div', { class: 'empty-actions' }, accept, decline)));
}

export function mountRoom(main, roomId) {
  let view = null;
  let shownAs = null;

  const render = () => {
    const room = ctx.store.room(roomId);
    const as = room ? room.membership : ctx.store.synced ? 'missing' : 'loading';
    if (as === shownAs && as === 'join') { view.update(); return; }
    if (as === shownAs && as !== 'invite') return;
    view?.destroy();
    view = null;
    shownAs = as;
    if (as === 'join') view = joinedView(main, room);
    else if (as === 'invite') inviteCard(main, room);
    else {
      replace(main, h('section', { class: 'empty-state' },
        h('h1', {}, as === 'loading' ? t('home.loading') : t('room.not_found')),
        as === 'missing' ? h('a', { class: 'btn', href: '#/' }, t('room.back_home')) : null));
    }
  };
  const onChange = (e) => {
    if (e.detail.rooms.has(roomId) || e.detail.initial || e.detail.accountData.size || shownAs !== 'join') render();
  };
  ctx.store.addEventListener('change', onChange);
  const offSettings = ctx.settings.onChange(() => view?.update());
  render();
  return {
    destroy() {
      ctx.store.removeEventListener('change', onChange);
      offSettings();
      view?.destroy();
    },
  };
}

function joinedView(main, room) {
  const me = ctx.store.me;
  const direct = ctx.store.isDirect(room);
  const title = h('h1', { class: 'room-title', id: 'room-title' });
  const sub = h('p', { class: 'room-sub' });
  const muteBtn = h('button', { type: 'button', class: 'icon-btn', onclick: () => busy(muteBtn,
    () => ctx.settings.setMuted(room.id, !ctx.settings.isMuted(room.id))) });
  const headAvatar = h('span', { class: 'room-head-avatar' });
  const head = h('header', { class: 'room-head' },
    h('a', { class: 'icon-btn back-btn', href: '#/', 'aria-label': t('room.back') }, icon('back')),
    headAvatar, h('div', { class: 'room-head-text' }, title, sub),
    h('div', { class: 'room-head-actions' },
      direct ? null : h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('room.invite'),
        title: t('room.invite'), onclick: () => inviteDialog(room) }, icon('userPlus')),
      muteBtn,
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('room.leave'), title: t('room.leave'),
        onclick: async () => {
          if (!await confirmDialog(t('room.leave'), t('room.leave_confirm', { room: ctx.store.roomName(room) }),
            t('room.leave'), true)) return;
          try { await ctx.store.leave(room.id); ctx.router.go(''); } catch (e) { showError(e); }
        } }, icon('door'))));
  const body = h('div', { class: 'room-body' });
  const typingEl = h('div', { class: 'typing', 'aria-live': 'polite' });
  const section = h('section', { class: 'room', 'aria-labelledby': 'room-title' }, head, body, typingEl);
  replace(main, section);

  let composer = null;
  const timeline = mountTimeline(body, room, {
    onReply: (ev) => composer.startReply(ev),
    onEdit: (ev) => composer.startEdit(ev),
    onDelete: async (ev) => {
      if (!await confirmDialog(t('msg.delete'), t('msg.delete_confirm'), t('msg.delete'), true)) return;
      ctx.store.deleteMessage(room.id, ev.event_id).catch(showError);
    },
    onRetry: (ev) => ctx.store.retry(room.id, ev),
    onDiscard: (ev) => ctx.store.discard(room.id, ev),
    onBottom: () => markRead(),
  });
  composer = mountComposer(section, room, { onSent: () => timeline.clearUnreadLine() });

  function renderHead() {
    const name = ctx.store.roomName(room);
    title.textContent = name;
    document.title = `${name} · Nexa`;
    const partner = direct ? ctx.store.directPartner(room) : null;
    const count = room.members('join').length;
    sub.textContent = direct ? (partner || '') : [t('room.members', { count }), room.topic()].filter(Boolean).join(' · ');
    replace(headAvatar, avatar(partner || room.id, name, room.avatarMxc(me, direct)));
    const muted = ctx.settings.isMuted(room.id);
    muteBtn.setAttribute('aria-pressed', String(muted));
    muteBtn.setAttribute('aria-label', muted ? t('room.unmute') : t('room.mute'));
    muteBtn.title = muted ? t('room.unmute') : t('room.mute');
    replace(muteBtn, icon(muted ? 'bellOff' : 'bell'));
  }

  function markRead() {
    if (document.visibilityState !== 'visible' || !timeline.isAtBottom()) return;
    const last = [...room.timeline].reverse().find((e) => !e.event_id.startsWith('~'));
    if (!last) return;
    ctx.store.markRead(room.id, last.event_id, !ctx.settings.get('send_receipts')).catch(() => {});
  }

  const onVisible = () => markRead();
  document.addEventListener('visibilitychange', onVisible);
  window.addEventListener('focus', onVisible);
  renderHead();
  typingEl.textContent = typingText(room);
  setTimeout(markRead, 300);
  if (matchMedia('(min-width: 720px)').matches) composer.focus();

  return {
    update() {
      renderHead();
      timeline.update();
      typingEl.textContent = typingText(room);
      markRead();
    },
    destroy() {
      document.removeEventListener('visibilitychange', onVisible);
      window.removeEventListener('focus', onVisible);
      timeline.destroy();
      composer.destroy();
    },
  };
}
