// The signed-in layout: the conversation sidebar and the main panel, which shows whatever the
// route says (a room, the directory, settings, profile, help, or the home empty state). On
// phones one of the two is visible at a time (data-view on the shell).
import { ctx } from '../ctx.js';
import { h, replace } from '../dom.js';
import { onLanguageChange, t } from '../i18n.js';
import { icon } from '../icons.js';
import { mountRoomList } from './roomlist.js';
import { mountRoom } from './roomview.js';
import { mountExplore } from './explore.js';
import { mountSettings } from './settings.js';
import { mountProfile } from './profile.js';
import { mountHelp } from './help.js';
import { newDirectChat, newGroup } from './dialogs.js';

function homeView(main) {
  const render = () => {
    const empty = !ctx.store.joinedRooms().length && !ctx.store.invites().length;
    replace(main, h('section', { class: 'empty-state', 'aria-labelledby': 'home-title' },
      icon('chat', 'empty-icon'),
      h('h1', { id: 'home-title' }, ctx.store.synced ? (empty ? t('home.empty_title') : t('home.pick_title'))
        : t('home.loading')),
      h('p', {}, ctx.store.synced ? (empty ? t('home.empty_text') : t('home.pick_text')) : ''),
      ctx.store.synced ? h('div', { class: 'empty-actions' },
        h('button', { type: 'button', class: 'btn btn-primary', onclick: newDirectChat }, t('home.start_chat')),
        h('button', { type: 'button', class: 'btn', onclick: newGroup }, t('home.create_group')),
        h('a', { class: 'btn', href: '#/explore' }, t('home.explore'))) : null));
  };
  const onChange = (e) => { if (e.detail.initial || e.detail.rooms.size) render(); };
  ctx.store.addEventListener('change', onChange);
  render();
  document.title = 'Nexa';
  return { destroy: () => ctx.store.removeEventListener('change', onChange) };
}

export function mountShell(root) {
  const banner = h('div', { class: 'conn-banner', role: 'status', 'aria-live': 'polite', hidden: true });
  const sidebar = h('aside', { class: 'sidebar' });
  const main = h('main', { id: 'main', class: 'main', tabindex: '-1' });
  const skip = h('a', { class: 'skip-link', href: '#main', onclick: (e) => {
    e.preventDefault();
    (main.querySelector('textarea') || main).focus();
  } });
  const shell = h('div', { class: 'shell', dataset: { view: 'list' } }, skip, banner, sidebar, main);
  replace(root, shell);
  let list = null;
  let view = null;
  let currentRoute = { name: '', arg: null };
  let status = 'connecting';
  let everConnected = false;
  let bannerTimer = null;

  const build = () => {
    skip.textContent = t('nav.skip');
    sidebar.setAttribute('aria-label', t('nav.conversations'));
    list?.destroy();
    list = mountRoomList(sidebar);
    route(currentRoute);
    renderBanner();
  };

  function route(r) {
    currentRoute = r;
    view?.destroy?.();
    view = null;
    ctx.openRoomId = null;
    let where = 'main';
    switch (r.name) {
      case 'room':
        ctx.openRoomId = r.arg;
        view = mountRoom(main, r.arg);
        break;
      case 'explore': view = mountExplore(main); break;
      case 'settings': view = mountSettings(main); break;
      case 'profile': view = mountProfile(main); break;
      case 'help': view = mountHelp(main); break;
      default:
        where = 'list';
        view = homeView(main);
    }
    shell.dataset.view = where;
    list.setSelected(r.name === 'room' ? r.arg : null, r.name);
  }

  function renderBanner() {
    clearTimeout(bannerTimer);
    const offline = navigator.onLine === false;
    if (status === 'connected' && !offline) {
      banner.hidden = true;
      shell.classList.remove('is-offline');
      return;
    }
    const show = () => {
      replace(banner, icon('wifiOff'), h('span', {}, offline ? t('conn.offline')
        : everConnected ? t('conn.lost') : t('conn.connecting')));
      banner.hidden = false;
      shell.classList.add('is-offline');
    };
    // A quick reconnect should not flash a banner.
    bannerTimer = setTimeout(show, everConnected || offline ? 1200 : 2500);
  }

  const onNet = () => renderBanner();
  window.addEventListener('online', onNet);
  window.addEventListener('offline', onNet);
  const offLang = onLanguageChange(() => build());
  build();

  return {
    route,
    destroy() {
      offLang();
      clearTimeout(bannerTimer);
      window.removeEventListener('online', onNet);
      window.removeEventListener('offline', onNet);
      view?.destroy?.();
      list?.destroy();
    },
    setConnection(s) {
      status = s;
      if (s === 'connected') everConnected = true;
      renderBanner();
    },
  };
}
