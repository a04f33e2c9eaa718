// Shared UI pieces: toasts, error wording, avatars, modal dialogs.
import { ctx } from './ctx.js';
import { h, focusFirst } from './dom.js';
import { t } from './i18n.js';
import { icon } from './icons.js';
import { mediaImage } from './media.js';

/** A human sentence for any error (ApiError errcodes, network failures). */
export function errorText(err) {
  if (!err) return t('error.unknown');
  const code = err.errcode;
  if (code === 'M_LIMIT_EXCEEDED') {
    const s = Math.max(1, Math.ceil((err.retryAfterMs ?? 1000) / 1000));
    return t('error.rate_limited', { count: s });
  }
  const known = {
    NX_NETWORK: 'error.network',
    M_FORBIDDEN: 'error.forbidden',
    M_USER_IN_USE: 'error.user_in_use',
    M_INVALID_USERNAME: 'error.invalid_username',
    M_WEAK_PASSWORD: 'error.weak_password',
    M_NOT_FOUND: 'error.not_found',
    M_TOO_LARGE: 'error.too_large',
    M_UNKNOWN_TOKEN: 'error.session_ended',
    M_EXCLUSIVE: 'error.invalid_username',
    M_ROOM_IN_USE: 'error.room_in_use',
  };
  if (known[code]) return t(known[code]);
  if (err.status >= 500) return t('error.server');
  return err.message ? t('error.with_detail', { detail: err.message }) : t('error.unknown');
}

let toastRoot = null;

export function toast(message, kind = 'info', ms = 5000) {
  if (!toastRoot) toastRoot = document.getElementById('toasts');
  const el = h('div', { class: ['toast', `toast-${kind}`], role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-text' }, message),
    h('button', { class: 'icon-btn', type: 'button', 'aria-label': t('action.dismiss'),
      onclick: () => el.remove() }, icon('close')));
  toastRoot.appendChild(el);
  if (ms) setTimeout(() => el.remove(), ms);
  return el;
}

export function showError(err) { return toast(errorText(err), 'error', 8000); }

const COLORS = 8;

function hashCode(s) {
  let x = 0;
  for (let i = 0; i < s.length; i += 1) x = (x * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(x);
}

/** A round avatar: the picture when there is one, else the initial on a stable colour. */
export function avatar(id, name, mxc, size = 'md') {
  const letter = (String(name || id || '?').replace(/^[@#!+]/, '').trim()[0] || '?').toUpperCase();
  const el = h('span', { class: ['avatar', `avatar-${size}`, `avatar-c${hashCode(id || name || '') % COLORS}`],
    'aria-hidden': 'true' }, h('span', { class: 'avatar-letter' }, letter));
  if (mxc && ctx.api) {
    const px = size === 'lg' ? 96 : 48;
    const img = mediaImage(mxc, { width: px, height: px, method: 'crop' }, '');
    img.classList.add('avatar-img');
    img.addEventListener('load', () => el.classList.add('has-img'));
    el.appendChild(img);
  }
  return el;
}

/**
 * A modal <dialog>: native focus trapping and Escape. build(close) returns the body; resolves
 * with whatever close(value) is given (undefined when dismissed).
 */
export function openDialog(title, build, { wide = false } = {}) {
  return new Promise((resolve) => {
    const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
    let result;
    const dlg = h('dialog', { class: ['dialog', wide && 'dialog-wide'], 'aria-labelledby': titleId });
    const close = (value) => { result = value; dlg.close(); };
    dlg.append(
      h('div', { class: 'dialog-head' },
        h('h2', { id: titleId, class: 'dialog-title' }, title),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('action.close'),
          onclick: () => close(undefined) }, icon('close'))),
      h('div', { class: 'dialog-body' }, build(close)));
    dlg.addEventListener('close', () => { dlg.remove(); resolve(result); });
    dlg.addEventListener('click', (e) => { if (e.target === dlg) close(undefined); });
    document.body.appendChild(dlg);
    dlg.showModal();
    focusFirst(dlg.querySelector('.dialog-body'));
  });
}

export function confirmDialog(title, text, confirmLabel, danger = false) {
  return openDialog(title, (close) => h('div', {},
    h('p', {}, text),
    h('div', { class: 'dialog-actions' },
      h('button', { type: 'button', class: 'btn', onclick: () => close(false) }, t('action.cancel')),
      h('button', { type: 'button', class: ['btn', danger ? 'btn-danger' : 'btn-primary'],
        onclick: () => close(true) }, confirmLabel))));
}

/** Disable a button while an async action runs; errors become a toast. */
export async function busy(button, fn) {
  if (button) button.disabled = true;
  try {
    return await fn();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}
