// The public room directory (/publicRooms): search, join, open.
import { ctx } from '../ctx.js';
import { debounce, h, replace, uid } from '../dom.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { avatar, busy, errorText } from '../ui.js';

export function mountExplore(main) {
  document.title = `${t('explore.title')} · Nexa`;
  const inputId = uid('explore');
  const input = h('input', { id: inputId, type: 'search', placeholder: t('explore.placeholder') });
  const list = h('ul', { class: 'directory', 'aria-label': t('explore.results') });
  const status = h('p', { class: 'hint', role: 'status' });
  const more = h('button', { type: 'button', class: 'btn', hidden: true, onclick: () => load(true) }, t('explore.more'));
  let next = null;
  let seq = 0;

  const card = (r) => {
    const joined = ctx.store.room(r.room_id)?.membership === 'join';
    const name = r.name || r.canonical_alias || r.room_id;
    const btn = h('button', { type: 'button', class: ['btn', !joined && 'btn-primary'], onclick: () => busy(btn, async () => {
      if (!joined) await ctx.api.join(r.room_id);
      ctx.router.go(`room/${encodeURIComponent(r.room_id)}`);
    }) }, joined ? t('explore.open') : t('explore.join'));
    return h('li', { class: 'directory-item' }, avatar(r.room_id, name, r.avatar_url),
      h('div', { class: 'directory-text' }, h('h2', { class: 'directory-name' }, name),
        r.canonical_alias && r.name ? h('p', { class: 'muted' }, r.canonical_alias) : null,
        r.topic ? h('p', { class: 'directory-topic' }, r.topic) : null,
        h('p', { class: 'muted' }, t('room.members', { count: r.num_joined_members || 0 }))), btn);
  };

  async function load(append = false) {
    const mine = ++seq;
    status.textContent = t('explore.loading');
    try {
      const res = await ctx.api.publicRooms(input.value.trim(), append ? next : null);
      if (mine !== seq) return;
      const chunk = (res.chunk || []).map(card);
      if (append) list.append(...chunk); else replace(list, chunk);
      next = res.next_batch || null;
      more.hidden = !next;
      status.textContent = list.children.length ? '' : input.value.trim() ? t('explore.none_match') : t('explore.empty');
    } catch (e) {
      if (mine === seq) status.textContent = errorText(e);
    }
  }

  const search = debounce(() => load(false), 300);
  input.addEventListener('input', search);
  replace(main, h('section', { class: 'page', 'aria-labelledby': 'explore-title' },
    h('header', { class: 'page-head' }, h('a', { class: 'icon-btn back-btn', href: '#/', 'aria-label': t('room.back') }, icon('back')),
      h('h1', { id: 'explore-title' }, t('explore.title'))),
    h('div', { class: 'page-body' },
      h('p', { class: 'muted' }, t('explore.text')),
      h('div', { class: 'field' }, h('label', { for: inputId }, t('explore.search_label')), input),
      status, list, more)));
  load();
  return { destroy() { seq += 1; } };
}
