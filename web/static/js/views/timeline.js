// The scrolling history of a room: day separators, grouped messages, the "new messages" line,
// infinite scroll backwards (/messages), sticking to the bottom as messages arrive, keeping
// the reading position when history is prepended, and jump buttons (first unread, latest).
import { ctx } from '../ctx.js';
import { h, reconcile } from '../dom.js';
import { dayLabel, sameDay, startOfDay } from '../format.js';
import { currentLanguage, t } from '../i18n.js';
import { icon } from '../icons.js';
import { buildMessage } from './message.js';

const GROUP_MS = 5 * 60 * 1000;
const LOAD_MORE_PX = 400;

export function mountTimeline(container, room, handlers) {
  const me = ctx.store.me;
  const cache = new Map();
  const list = h('ol', { class: 'events', 'aria-label': t('room.messages') });
  const top = h('div', { class: 'timeline-top', 'aria-live': 'polite' });
  const scroller = h('div', { class: 'timeline', tabindex: '0', role: 'log',
    'aria-label': t('room.messages') }, top, list);
  const jumpUnread = h('button', { type: 'button', class: 'jump jump-unread', hidden: true,
    onclick: () => jumpToUnread() }, icon('arrowUp'), h('span', {}, t('room.jump_unread')));
  const jumpLatest = h('button', { type: 'button', class: 'jump jump-latest', hidden: true,
    'aria-label': t('room.jump_latest'), onclick: () => scrollToBottom(true) }, icon('arrowDown'));
  container.append(scroller, jumpUnread, jumpLatest);

  // Where the "new messages" line goes is fixed when the room opens: after the last event read
  // then (my receipt, or my own last message). If that event is not loaded yet, the line
  // appears once history reaches it (jump to first unread pages back until it does).
  let showUnread = room.unread(me).count > 0;
  const readIdx = room.readIndex(me);
  const readMark = readIdx >= 0 ? room.timeline[readIdx].event_id : room.receipts.get(me)?.eventId || null;

  function unreadFromId() {
    if (!showUnread) return null;
    const i = readMark ? room.timeline.findIndex((e) => e.event_id === readMark) : -1;
    if (i < 0 && !room.historyDone) return null;
    for (let j = i + 1; j < room.timeline.length; j += 1) {
      const e = room.timeline[j];
      if (e.sender !== me && e.type === 'm.room.message' && !e.unsigned?.redacted_because) return e.event_id;
    }
    return null;
  }
  let stick = true;
  let destroyed = false;

  const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;

  function scrollToBottom(smooth = false) {
    stick = true;
    const reduce = matchMedia('(prefers-reduced-motion: reduce)').matches;
    scroller.scrollTo({ top: scroller.scrollHeight, behavior: smooth && !reduce ? 'smooth' : 'auto' });
  }

  /** Where each person's read marker shows: on the last message (not their own) they have
   * read, so "Seen by Ann" sits under what Ann has seen, even after she replied. */
  function readersMap(events) {
    const index = new Map(events.map((e, i) => [e.event_id, i]));
    const map = new Map();
    for (const [user, r] of room.receipts) {
      if (user === me) continue;
      let i = index.get(r.eventId);
      if (i === undefined) { // a receipt on a hidden event (a reaction, an edit): by time
        const ev = room.byId.get(r.eventId);
        if (!ev) continue;
        i = events.length - 1;
        while (i >= 0 && (events[i].event_id.startsWith('~') || events[i].origin_server_ts > ev.origin_server_ts)) i -= 1;
      }
      while (i >= 0 && (events[i].sender === user || events[i].type !== 'm.room.message')) i -= 1;
      if (i < 0) continue;
      const id = events[i].event_id;
      if (!map.has(id)) map.set(id, []);
      map.get(id).push(user);
    }
    return map;
  }

  function items() {
    const out = [];
    const events = room.shownEvents();
    const readers = readersMap(events);
    const lang = currentLanguage();
    const unreadFrom = unreadFromId();
    let prev = null;
    for (const ev of events) {
      const ts = ev.origin_server_ts;
      if (!prev || !sameDay(prev.origin_server_ts, ts)) {
        const label = dayLabel(ts);
        out.push({ key: `day-${startOfDay(ts)}`, version: `${label}|${lang}`, build: () => h('li', {
          class: 'day-sep', role: 'separator', 'aria-label': label }, h('span', {}, label)) });
      }
      if (ev.event_id === unreadFrom) {
        out.push({ key: 'unread-line', version: lang, build: () => h('li', { class: 'unread-line',
          role: 'separator', 'aria-label': t('room.new_messages') }, h('span', {}, t('room.new_messages'))) });
      }
      const cont = !!prev && prev.type === 'm.room.message' && ev.type === 'm.room.message'
        && prev.sender === ev.sender && ts - prev.origin_server_ts < GROUP_MS
        && sameDay(prev.origin_server_ts, ts) && ev.event_id !== unreadFrom;
      const who = readers.get(ev.event_id) || [];
      const version = [room.versions.get(ev.event_id) || 0, cont, who.join(','), ev.status || '',
        lang, ctx.settings.get('send_receipts')].join('|');
      out.push({ key: ev.event_id, version, build: () => buildMessage(room, ev, {
        continuation: cont, readers: who, ...handlers, onJump: jumpTo }) || h('li', { class: 'event hidden-event' }) });
      prev = ev;
    }
    return out;
  }

  /** Re-render, keeping the reader's place (or the bottom, when they were there). */
  function update() {
    if (destroyed) return;
    const wasBottom = stick || atBottom();
    let anchor = null;
    let anchorTop = 0;
    if (!wasBottom) {
      const box = scroller.getBoundingClientRect();
      for (const li of list.children) {
        const r = li.getBoundingClientRect();
        if (r.bottom > box.top) { anchor = li; anchorTop = r.top; break; }
      }
    }
    reconcile(list, items(), cache);
    renderTop();
    if (wasBottom) scrollToBottom();
    else if (anchor && anchor.isConnected) scroller.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
    updateJumps();
    fillViewport();
  }

  function renderTop() {
    top.textContent = room.historyDone ? t('room.history_start')
      : room.paginating ? t('room.loading_history') : '';
    top.classList.toggle('done', room.historyDone);
  }

  let filling = 0;
  async function loadMore() {
    if (room.historyDone || room.paginating || destroyed) return false;
    renderTop();
    try {
      await ctx.store.paginate(room.id);
    } catch (e) {
      top.textContent = t('room.history_failed');
      return false;
    }
    return true;
  }

  // Keep loading until the history fills the screen (or runs out).
  async function fillViewport() {
    if (filling || destroyed || room.historyDone) return;
    if (scroller.scrollHeight > scroller.clientHeight + LOAD_MORE_PX / 2) return;
    filling += 1;
    try { await loadMore(); } finally { filling -= 1; }
  }

  function visible(li) {
    const box = scroller.getBoundingClientRect();
    const r = li.getBoundingClientRect();
    return r.bottom > box.top && r.top < box.bottom;
  }

  function updateJumps() {
    jumpLatest.hidden = atBottom();
    const line = list.querySelector('.unread-line');
    jumpUnread.hidden = !showUnread || (line && (visible(line) || line.getBoundingClientRect().top
      > scroller.getBoundingClientRect().top));
  }

  async function jumpTo(eventId, block = 'center') {
    for (let i = 0; i < 20 && !room.byId.has(eventId) && !room.historyDone; i += 1) {
      if (!(await loadMore())) break;
    }
    const li = list.querySelector(`li[data-event-id="${CSS.escape(eventId)}"]`);
    if (!li) return false;
    stick = false;
    // The "new messages" line sits just above the first unread message: show it too.
    const line = eventId === unreadFromId() ? list.querySelector('.unread-line') : null;
    (line || li).scrollIntoView({ block });
    li.classList.add('flash');
    setTimeout(() => li.classList.remove('flash'), 1600);
    li.focus({ preventScroll: true });
    return true;
  }

  async function jumpToUnread() {
    for (let i = 0; i < 50 && showUnread && !unreadFromId() && !room.historyDone; i += 1) {
      if (!(await loadMore())) break;
    }
    const target = unreadFromId();
    if (target) await jumpTo(target, 'start');
    else showUnread = false;
    updateJumps();
  }

  scroller.addEventListener('scroll', () => {
    stick = atBottom();
    if (scroller.scrollTop < LOAD_MORE_PX) loadMore();
    updateJumps();
    if (stick) handlers.onBottom?.();
  }, { passive: true });
  // Late-loading pictures must not push the newest message out of view.
  scroller.addEventListener('load', () => { if (stick) scrollToBottom(); }, true);

  // Arrow keys move between messages (roving focus); Tab then reaches a message's actions.
  scroller.addEventListener('keydown', (e) => {
    if (!['ArrowUp', 'ArrowDown'].includes(e.key) || e.target.closest('.picker')) return;
    const msgs = [...list.querySelectorAll('li.msg, li.sys')];
    const cur = e.target.closest('li.msg, li.sys');
    let i = cur ? msgs.indexOf(cur) : msgs.length;
    i += e.key === 'ArrowUp' ? -1 : 1;
    if (i < 0 || i >= msgs.length) return;
    e.preventDefault();
    msgs[i].focus();
  });

  const resize = new ResizeObserver(() => { if (stick) scrollToBottom(); });
  resize.observe(scroller);

  update();
  scrollToBottom();

  return {
    update,
    isAtBottom: () => atBottom(),
    clearUnreadLine() { showUnread = false; update(); },
    destroy() { destroyed = true; resize.disconnect(); },
  };
}
