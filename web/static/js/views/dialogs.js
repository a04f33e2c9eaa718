// Dialogs: start a direct chat by searching people (ranked by the server), create a group,
// invite people to a room.
import { ctx } from '../ctx.js';
import { debounce, h, replace, uid } from '../dom.js';
import { t } from '../i18n.js';
import { avatar, busy, errorText, openDialog, showError, toast } from '../ui.js';

const USER_ID_RE = /^@[^:\s]+:\S+$/;

/** A people picker: search box + ranked results; onPick(user) for each chosen person. */
function peoplePicker(onPick, { label, exclude = new Set() }) {
  const inputId = uid('people');
  const input = h('input', { id: inputId, type: 'search', autocomplete: 'off', role: 'combobox',
    'aria-expanded': 'false', 'aria-autocomplete': 'list', placeholder: t('people.placeholder') });
  const results = h('ul', { class: 'people-results', role: 'listbox', id: `${inputId}-list`,
    'aria-label': t('people.results') });
  input.setAttribute('aria-controls', results.id);
  const status = h('p', { class: 'hint', role: 'status' });
  let seq = 0;

  const option = (u) => h('li', { role: 'option', class: 'person', tabindex: '-1',
    dataset: { userId: u.user_id }, onclick: () => onPick(u),
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onPick(u); } } },
  avatar(u.user_id, u.display_name || u.user_id, u.avatar_url, 'sm'),
  h('span', { class: 'person-text' }, h('span', { class: 'person-name' }, u.display_name || u.user_id),
    h('span', { class: 'person-id' }, u.user_id)));

  const search = debounce(async () => {
    const term = input.value.trim();
    const mine = ++seq;
    if (!term) { replace(results); status.textContent = ''; input.setAttribute('aria-expanded', 'false'); return; }
    status.textContent = t('people.searching');
    try {
      const res = await ctx.api.searchUsers(term);
      if (mine !== seq) return;
      const list = (res.results || []).filter((u) => u.user_id !== ctx.store.me && !exclude.has(u.user_id));
      if (USER_ID_RE.test(term) && !list.some((u) => u.user_id === term) && term !== ctx.store.me) {
        list.push({ user_id: term, display_name: term });
      }
      replace(results, list.map(option));
      input.setAttribute('aria-expanded', String(list.length > 0));
      status.textContent = list.length ? t('people.count', { count: list.length }) : t('people.none');
    } catch (e) {
      if (mine === seq) status.textContent = errorText(e);
    }
  }, 250);
  input.addEventListener('input', search);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown') { e.preventDefault(); results.querySelector('[role=option]')?.focus(); }
  });
  results.addEventListener('keydown', (e) => {
    const opts = [...results.querySelectorAll('[role=option]')];
    const i = opts.indexOf(document.activeElement);
    if (e.key === 'ArrowDown') { e.preventDefault(); opts[Math.min(opts.length - 1, i + 1)]?.focus(); }
    if (e.key === 'ArrowUp') { e.preventDefault(); (i <= 0 ? input : opts[i - 1]).focus(); }
  });
  return h('div', { class: 'people-picker' },
    h('label', { for: inputId }, label), input, status, results);
}

export function newDirectChat() {
  return openDialog(t('dm.title'), (close) => h('div', {},
    h('p', { class: 'muted' }, t('dm.text')),
    peoplePicker(async (u) => {
      try {
        const roomId = await ctx.store.startDirectChat(u.user_id);
        close(roomId);
        ctx.router.go(`room/${encodeURIComponent(roomId)}`);
      } catch (e) {
        showError(e);
      }
    }, { label: t('dm.search_label') })));
}

export function newGroup() {
  return openDialog(t('group.title'), (close) => {
    const invited = new Map();
    const chips = h('ul', { class: 'chips', 'aria-label': t('group.invited') });
    const renderChips = () => replace(chips, [...invited.values()].map((u) => h('li', { class: 'chip' },
      u.display_name || u.user_id, h('button', { type: 'button', class: 'chip-x',
        'aria-label': t('group.remove', { name: u.display_name || u.user_id }),
        onclick: () => { invited.delete(u.user_id); renderChips(); } }, '×'))));
    const name = h('input', { id: uid('g'), required: true, maxlength: '255' });
    const topic = h('input', { id: uid('g'), maxlength: '500' });
    const pub = h('input', { id: uid('g'), type: 'checkbox' });
    const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const create = h('button', { type: 'submit', class: 'btn btn-primary' }, t('group.create'));
    return h('form', { class: 'form', onsubmit: (e) => {
      e.preventDefault();
      if (!name.value.trim()) {
        err.textContent = t('group.name_required');
        err.hidden = false;
        name.focus();
        return;
      }
      busy(create, async () => {
        const roomId = await ctx.store.createGroup({ name: name.value.trim(), topic: topic.value.trim(),
          isPublic: pub.checked, invite: [...invited.keys()] });
        close(roomId);
        ctx.router.go(`room/${encodeURIComponent(roomId)}`);
      });
    } },
    h('div', { class: 'field' }, h('label', { for: name.id }, t('group.name')), name),
    h('div', { class: 'field' }, h('label', { for: topic.id }, t('group.topic')), topic),
    h('div', { class: 'field check' }, pub, h('label', { for: pub.id }, t('group.public'))),
    peoplePicker((u) => { invited.set(u.user_id, u); renderChips(); }, { label: t('group.invite_label') }),
    chips, err,
    h('div', { class: 'dialog-actions' },
      h('button', { type: 'button', class: 'btn', onclick: () => close() }, t('action.cancel')), create));
  });
}

export function inviteDialog(room) {
  const exclude = new Set(room.members('join').map((m) => m.userId).concat(room.members('invite').map((m) => m.userId)));
  return openDialog(t('invite.people_title', { room: ctx.store.roomName(room) }), (close) => h('div', {},
    peoplePicker(async (u) => {
      try {
        await ctx.api.invite(room.id, u.user_id);
        toast(t('invite.sent', { name: u.display_name || u.user_id }), 'info');
        close(u.user_id);
      } catch (e) {
        showError(e);
      }
    }, { label: t('invite.search_label'), exclude })));
}
