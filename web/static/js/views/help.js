// The help centre: short answers to common questions, in the user's language.
import { h, replace } from '../dom.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';

const TOPICS = ['start', 'dm', 'groups', 'invites', 'edit', 'files', 'unread', 'drafts', 'privacy',
  'notifications', 'keyboard', 'trouble'];

export function mountHelp(main) {
  document.title = `${t('help.title')} · Nexa`;
  replace(main, h('section', { class: 'page', 'aria-labelledby': 'help-title' },
    h('header', { class: 'page-head' }, h('a', { class: 'icon-btn back-btn', href: '#/', 'aria-label': t('room.back') }, icon('back')),
      h('h1', { id: 'help-title' }, t('help.title'))),
    h('div', { class: 'page-body' },
      h('p', { class: 'muted' }, t('help.intro')),
      TOPICS.map((k) => h('details', { class: 'faq' },
        h('summary', {}, t(`help.${k}_q`)),
        h('p', {}, t(`help.${k}_a`)))))));
  return { destroy() {} };
}
