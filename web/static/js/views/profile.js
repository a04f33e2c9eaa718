// My profile: display name and avatar (uploaded to the media repository), my user ID, log out.
import { ctx } from '../ctx.js';
import { h, replace, uid } from '../dom.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { avatar, busy, toast } from '../ui.js';

export function mountProfile(main) {
  document.title = `${t('profile.title')} · Nexa`;
  const me = ctx.store.me;
  const nameId = uid('p');
  // Editable once the profile has arrived: text typed before would be overwritten (or, with
  // the old name selected to be replaced, appended to it).
  const name = h('input', { id: nameId, maxlength: '255', autocomplete: 'nickname', disabled: true });
  const pic = h('div', { class: 'profile-avatar' });
  const file = h('input', { type: 'file', accept: 'image/png,image/jpeg,image/gif,image/webp', hidden: true });
  const save = h('button', { type: 'submit', class: 'btn btn-primary' }, t('profile.save'));
  const change = h('button', { type: 'button', class: 'btn', onclick: () => file.click() }, icon('image'), t('profile.change_avatar'));
  const remove = h('button', { type: 'button', class: 'btn', onclick: () => busy(remove, async () => {
    await ctx.api.setAvatarUrl('');
    profile.avatar_url = null;
    renderPic();
  }) }, t('profile.remove_avatar'));
  let profile = {};

  const renderPic = () => {
    replace(pic, avatar(me, profile.displayname || me, profile.avatar_url || null, 'lg'));
    remove.hidden = !profile.avatar_url;
  };

  file.addEventListener('change', () => {
    const f = file.files[0];
    file.value = '';
    if (!f) return;
    busy(change, async () => {
      const { content_uri: url } = await ctx.api.upload(f, f.name);
      await ctx.api.setAvatarUrl(url);
      profile.avatar_url = url;
      renderPic();
      toast(t('profile.avatar_saved'), 'info');
    });
  });

  const form = h('form', { class: 'form', onsubmit: (e) => {
    e.preventDefault();
    busy(save, async () => {
      await ctx.api.setDisplayName(name.value.trim());
      profile.displayname = name.value.trim();
      renderPic();
      toast(t('profile.saved'), 'info');
    });
  } },
  h('div', { class: 'field' }, h('label', { for: nameId }, t('profile.display_name')), name),
  h('div', { class: 'form-actions' }, save));

  replace(main, h('section', { class: 'page', 'aria-labelledby': 'profile-title' },
    h('header', { class: 'page-head' }, h('a', { class: 'icon-btn back-btn', href: '#/', 'aria-label': t('room.back') }, icon('back')),
      h('h1', { id: 'profile-title' }, t('profile.title'))),
    h('div', { class: 'page-body' },
      h('div', { class: 'profile-top' }, pic, h('div', {},
        h('p', { class: 'profile-id' }, h('span', { class: 'muted' }, t('profile.user_id')), ' ', h('code', {}, me)),
        h('div', { class: 'row' }, change, remove, file))),
      form,
      h('hr'),
      h('button', { type: 'button', class: 'btn btn-danger', onclick: () => ctx.logout() }, icon('logout'), t('nav.logout')))));

  ctx.api.profile(me).then((p) => {
    profile = p || {};
    name.value = profile.displayname || '';
    name.disabled = false;
    renderPic();
  }, () => { name.disabled = false; renderPic(); });
  renderPic();
  return { destroy() {} };
}
