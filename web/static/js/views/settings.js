// Settings: appearance (theme), language, notifications (browser notifications for direct
// messages and mentions; muted rooms), privacy (search, invites — enforced by the server —
// read receipts and typing notices). Saved as account data, so they follow the user.
import { ctx } from '../ctx.js';
import { h, replace, uid } from '../dom.js';
import { LANGUAGES, currentLanguage, t } from '../i18n.js';
import { icon } from '../icons.js';
import { notificationsSupported, requestPermission } from '../notify.js';
import { showError, toast } from '../ui.js';

function radios(name, legend, options, value, onChange) {
  return h('fieldset', { class: 'radio-group' }, h('legend', {}, legend),
    options.map(([v, label]) => {
      const id = uid(name);
      return h('div', { class: 'radio' },
        h('input', { type: 'radio', name, id, value: v, checked: v === value, dataset: { fk: `${name}-${v}` },
          onchange: () => onChange(v) }),
        h('label', { for: id }, label));
    }));
}

function toggle(label, checked, onChange, hint) {
  const id = uid('tg');
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  return h('div', { class: 'toggle' },
    h('input', { type: 'checkbox', id, role: 'switch', checked, dataset: { fk: label },
      'aria-describedby': hint ? `${id}-hint` : null,
      onchange: (e) => onChange(e.target.checked, e.target) }),
    h('label', { for: id }, label), hintEl);
}

async function save(fn) {
  try {
    await fn();
    toast(t('settings.saved'), 'info', 2000);
  } catch (e) {
    showError(e);
  }
}

export function mountSettings(main) {
  const render = () => {
    // Re-rendering must not lose the keyboard user's place.
    const focusKey = main.contains(document.activeElement) ? document.activeElement.dataset.fk : null;
    build();
    if (focusKey) main.querySelector(`[data-fk="${CSS.escape(focusKey)}"]`)?.focus();
  };
  const build = () => {
    document.title = `${t('settings.title')} · Nexa`;
    const s = ctx.settings.values;
    const privacy = ctx.settings.privacy();
    const notif = s.notifications;
    const perm = notificationsSupported() ? Notification.permission : 'unsupported';
    const muted = s.muted_rooms.map((id) => ctx.store.room(id)).filter(Boolean);
    const langId = uid('lang');
    replace(main, h('section', { class: 'page', 'aria-labelledby': 'settings-title' },
      h('header', { class: 'page-head' }, h('a', { class: 'icon-btn back-btn', href: '#/', 'aria-label': t('room.back') }, icon('back')),
        h('h1', { id: 'settings-title' }, t('settings.title'))),
      h('div', { class: 'page-body settings' },
        h('section', { class: 'card', 'aria-labelledby': 'set-appearance' },
          h('h2', { id: 'set-appearance' }, t('settings.appearance')),
          radios('theme', t('settings.theme'), [['light', t('settings.theme_light')], ['dark', t('settings.theme_dark')],
            ['auto', t('settings.theme_auto')]], s.theme, (v) => save(() => ctx.settings.update({ theme: v }))),
          h('div', { class: 'field' }, h('label', { for: langId }, t('settings.language')),
            h('select', { id: langId, dataset: { fk: 'language' }, onchange: (e) => {
              localStorage.setItem('nexa.lang', e.target.value);
              save(() => ctx.settings.update({ language: e.target.value }));
            } }, Object.entries(LANGUAGES).map(([code, name]) => h('option', { value: code,
              selected: code === currentLanguage() }, name))))),
        h('section', { class: 'card', 'aria-labelledby': 'set-notif' },
          h('h2', { id: 'set-notif' }, t('settings.notifications')),
          perm === 'unsupported' ? h('p', { class: 'hint' }, t('settings.notif_unsupported')) : null,
          perm === 'denied' ? h('p', { class: 'hint hint-bad' }, t('settings.notif_denied')) : null,
          toggle(t('settings.notif_enable'), notif.enabled && perm === 'granted', async (on, el) => {
            if (on) {
              const p = await requestPermission();
              if (p !== 'granted') { el.checked = false; render(); return; }
            }
            save(() => ctx.settings.update({ notifications: { ...notif, enabled: on } }));
          }),
          toggle(t('settings.notif_direct'), notif.direct, (on) => save(() => ctx.settings.update({
            notifications: { ...notif, direct: on } }))),
          toggle(t('settings.notif_mentions'), notif.mentions, (on) => save(() => ctx.settings.update({
            notifications: { ...notif, mentions: on } }))),
          h('h3', {}, t('settings.muted_rooms')),
          muted.length ? h('ul', { class: 'muted-list' }, muted.map((r) => h('li', {},
            h('span', {}, ctx.store.roomName(r)), ' ',
            h('button', { type: 'button', class: 'link-btn', onclick: () => save(() => ctx.settings.setMuted(r.id, false)) },
              t('room.unmute'))))) : h('p', { class: 'hint' }, t('settings.no_muted'))),
        h('section', { class: 'card', 'aria-labelledby': 'set-privacy' },
          h('h2', { id: 'set-privacy' }, t('settings.privacy')),
          toggle(t('settings.searchable'), privacy.searchable, (on) => save(() => ctx.settings.setPrivacy({ searchable: on })),
            t('settings.searchable_hint')),
          radios('invite_policy', t('settings.invite_policy'), [['anyone', t('settings.invite_anyone')],
            ['shared_rooms', t('settings.invite_shared')]], privacy.invite_policy,
          (v) => save(() => ctx.settings.setPrivacy({ invite_policy: v }))),
          toggle(t('settings.send_receipts'), s.send_receipts, (on) => save(() => ctx.settings.update({ send_receipts: on })),
            t('settings.send_receipts_hint')),
          toggle(t('settings.send_typing'), s.send_typing, (on) => save(() => ctx.settings.update({ send_typing: on })))),
        h('section', { class: 'card', 'aria-labelledby': 'set-account' },
          h('h2', { id: 'set-account' }, t('settings.account')),
          h('p', {}, t('settings.signed_in_as'), ' ', h('code', {}, ctx.store.me)),
          h('div', { class: 'row' },
            h('a', { class: 'btn', href: '#/profile' }, icon('user'), t('nav.profile')),
            h('button', { type: 'button', class: 'btn btn-danger', onclick: () => ctx.logout() }, icon('logout'), t('nav.logout')))))));
  };
  const onChange = (e) => {
    if (e.detail.accountData.has('im.nexa.privacy')) render();
  };
  ctx.store.addEventListener('change', onChange);
  // Settings may arrive (initial sync, another browser) while this page is open.
  const offSettings = ctx.settings.onChange(() => render());
  render();
  return { destroy() { ctx.store.removeEventListener('change', onChange); offSettings(); } };
}
