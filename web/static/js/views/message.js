// One timeline entry: a message (text, formatted text, image, file), with its reply quote,
// reactions, edit marker, delivery state, read receipts and action toolbar; or a one-line
// room event (joins, renames). User content is set as text, or sanitised HTML.
import { ctx } from '../ctx.js';
import { h } from '../dom.js';
import { formatDateTime, formatSize, formatTime, linkify, stripReplyFallback } from '../format.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { downloadMedia, mediaImage } from '../media.js';
import { mentionsMe } from '../notify.js';
import { isRedacted } from '../room.js';
import { sanitizeHtml } from '../sanitize.js';
import { avatar, openDialog, showError } from '../ui.js';

export const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
const EMOJI_ONLY = /^(?:\p{Extended_Pictographic}|\p{Emoji_Component}|\u200d|\ufe0f|\s){1,12}$/u;

function systemText(room, ev) {
  const who = room.memberName(ev.sender);
  const c = ev.content || {};
  if (ev.type === 'm.room.create') return t('sys.created', { name: who });
  if (ev.type === 'm.room.name') return c.name ? t('sys.renamed', { name: who, room: c.name }) : t('sys.name_removed', { name: who });
  if (ev.type === 'm.room.topic') return t('sys.topic', { name: who, topic: c.topic || '' });
  if (ev.type !== 'm.room.member') return null;
  const target = c.displayname || room.memberName(ev.state_key);
  const prev = ev.unsigned?.prev_content || {};
  switch (c.membership) {
    case 'join':
      if (prev.membership === 'join') {
        if (prev.displayname !== c.displayname && c.displayname) {
          return t('sys.renamed_self', { old: prev.displayname || ev.state_key, name: c.displayname });
        }
        return prev.avatar_url !== c.avatar_url ? t('sys.avatar', { name: target }) : null;
      }
      return t('sys.joined', { name: target });
    case 'invite': return t('sys.invited', { name: who, target });
    case 'leave':
      if (ev.sender !== ev.state_key) return t('sys.kicked', { name: who, target: prev.displayname || target });
      return prev.membership === 'invite' ? t('sys.declined', { name: target }) : t('sys.left', { name: prev.displayname || target });
    case 'ban': return t('sys.banned', { name: who, target: prev.displayname || target });
    default: return null;
  }
}

export function buildSystem(room, ev) {
  const text = systemText(room, ev);
  if (!text) return null;
  return h('li', { class: 'event sys', dataset: { eventId: ev.event_id } },
    h('span', {}, text), ' ',
    h('time', { datetime: new Date(ev.origin_server_ts).toISOString(), title: formatDateTime(ev.origin_server_ts) },
      formatTime(ev.origin_server_ts)));
}

function textBody(content) {
  const body = stripReplyFallback(String(content.body ?? ''));
  if (content.format === 'org.matrix.custom.html' && typeof content.formatted_body === 'string') {
    return h('div', { class: 'msg-text formatted' }, sanitizeHtml(content.formatted_body));
  }
  return h('div', { class: ['msg-text', EMOJI_ONLY.test(body) && body.trim() && 'emoji-only'] },
    linkify(body));
}

function openImage(content) {
  openDialog(content.body || t('msg.image'), () => h('div', { class: 'lightbox' },
    mediaImage(content.url, null, content.body || '', 'lightbox-img'),
    h('button', { type: 'button', class: 'btn', onclick: () => downloadMedia(content.url, content.body)
      .catch(showError) }, icon('download'), t('msg.download'))), { wide: true });
}

function imageBody(content) {
  const info = content.info || {};
  const w = Number(info.w) || 320;
  const hgt = Number(info.h) || 240;
  const scale = Math.min(1, 320 / w, 240 / hgt);
  const img = mediaImage(content.url, { width: 320, height: 240, method: 'scale' }, content.body || '', 'msg-img');
  img.width = Math.max(1, Math.round(w * scale));
  img.height = Math.max(1, Math.round(hgt * scale));
  return h('button', { type: 'button', class: 'msg-image', 'aria-label': t('msg.open_image', { name: content.body || '' }),
    onclick: () => openImage(content) }, img);
}

function fileBody(content) {
  const name = content.filename || content.body || t('msg.file');
  return h('button', { type: 'button', class: 'file-chip', 'aria-label': t('msg.download_named', { name }),
    onclick: () => downloadMedia(content.url, name).catch(showError) },
  icon('file'), h('span', { class: 'file-name' }, name),
  h('span', { class: 'file-size' }, formatSize(content.info?.size)), icon('download'));
}

function replyQuote(room, ev, onJump) {
  const targetId = ctx.store.repliedTo(ev);
  if (!targetId) return null;
  const quote = h('button', { type: 'button', class: 'reply-quote', onclick: () => onJump(targetId) },
    h('span', { class: 'reply-sender' }, '…'), h('span', { class: 'reply-text' }, ''));
  const fill = (orig) => {
    if (!orig) {
      quote.lastChild.textContent = t('msg.reply_unavailable');
      quote.firstChild.textContent = '';
      return;
    }
    const c = room.displayContent(orig);
    quote.firstChild.textContent = room.memberName(orig.sender);
    quote.lastChild.textContent = isRedacted(orig) ? t('msg.deleted')
      : c?.msgtype === 'm.image' ? t('msg.image') : stripReplyFallback(String(c?.body || '')).slice(0, 200);
    quote.setAttribute('aria-label', t('msg.reply_to', { name: quote.firstChild.textContent,
      text: quote.lastChild.textContent }));
  };
  const local = room.byId.get(targetId);
  if (local) fill(local); else ctx.store.fetchEvent(room.id, targetId).then(fill);
  return quote;
}

function reactionsRow(room, ev) {
  const r = room.reactionsFor(ev.event_id);
  if (!r.size) return null;
  const me = ctx.store.me;
  return h('div', { class: 'reactions' }, [...r.entries()].filter(([, s]) => s.size).map(([key, senders]) => {
    const mine = senders.has(me);
    const names = [...senders.keys()].map((u) => (u === me ? t('msg.you') : room.memberName(u))).join(', ');
    return h('button', { type: 'button', class: ['reaction', mine && 'mine'], 'aria-pressed': String(mine),
      title: names, 'aria-label': t('msg.reaction_label', { key, count: senders.size, names }),
      onclick: () => ctx.store.toggleReaction(room.id, ev.event_id, key).catch(showError) },
    h('span', { class: 'reaction-key' }, key), h('span', { class: 'reaction-count' }, String(senders.size)));
  }));
}

function reactionPicker(room, ev, anchor) {
  const close = () => { pop.remove(); document.removeEventListener('pointerdown', outside, true); anchor.focus(); };
  const outside = (e) => { if (!pop.contains(e.target) && e.target !== anchor) close(); };
  const pop = h('div', { class: 'picker', role: 'group', 'aria-label': t('msg.pick_reaction'),
    onkeydown: (e) => {
      if (e.key === 'Escape') { e.stopPropagation(); close(); }
      if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        const b = [...pop.querySelectorAll('button')];
        const i = b.indexOf(document.activeElement);
        b[(i + (e.key === 'ArrowRight' ? 1 : b.length - 1)) % b.length]?.focus();
      }
    } }, QUICK_REACTIONS.map((key) => h('button', { type: 'button', class: 'picker-emoji',
    'aria-label': t('msg.react_with', { key }), onclick: () => {
      close();
      const has = room.reactionsFor(ev.event_id).get(key)?.has(ctx.store.me);
      if (!has) ctx.store.toggleReaction(room.id, ev.event_id, key).catch(showError);
    } }, key)));
  anchor.parentNode.after(pop);
  document.addEventListener('pointerdown', outside, true);
  pop.querySelector('button').focus();
}

function actions(room, ev, opts, own) {
  const me = ctx.store.me;
  const canDelete = own || room.canRedactOthers(me);
  const bar = h('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': t('msg.actions') });
  const react = h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('msg.react'), title: t('msg.react'),
    onclick: () => reactionPicker(room, ev, react) }, icon('smile'));
  bar.append(react,
    h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('msg.reply'), title: t('msg.reply'),
      onclick: () => opts.onReply(ev) }, icon('reply')));
  const c = ev.content || {};
  if (own && (c.msgtype === 'm.text' || c.msgtype === 'm.emote' || c.msgtype === 'm.notice')) {
    bar.append(h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('msg.edit'), title: t('msg.edit'),
      onclick: () => opts.onEdit(ev) }, icon('edit')));
  }
  if (canDelete) {
    bar.append(h('button', { type: 'button', class: 'icon-btn danger', 'aria-label': t('msg.delete'),
      title: t('msg.delete'), onclick: () => opts.onDelete(ev) }, icon('trash')));
  }
  return bar;
}

function receiptsRow(room, readers) {
  if (!readers.length) return null;
  const names = readers.map((u) => room.memberName(u));
  return h('div', { class: 'receipts', title: t('msg.seen_by', { names: names.join(', ') }),
    'aria-label': t('msg.seen_by', { names: names.join(', ') }) },
  icon('checks', 'receipt-icon'),
  readers.slice(0, 5).map((u) => avatar(u, room.memberName(u), room.memberAvatar(u), 'xs')),
  readers.length > 5 ? h('span', { class: 'receipt-more' }, `+${readers.length - 5}`) : null);
}

/** opts: {continuation, readers, onReply, onEdit, onDelete, onJump, onRetry, onDiscard} */
export function buildMessage(room, ev, opts) {
  if (ev.type !== 'm.room.message' && ev.type !== 'm.room.encrypted' && ev.type !== 'm.sticker') {
    return buildSystem(room, ev);
  }
  const me = ctx.store.me;
  const own = ev.sender === me;
  const pending = !!ev.status && ev.status !== 'sent';
  const redacted = isRedacted(ev);
  const content = room.displayContent(ev) || {};
  const name = room.memberName(ev.sender);
  const ts = ev.origin_server_ts;
  const headId = `h-${ev.event_id.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  let body;
  if (redacted) body = h('div', { class: 'msg-text deleted' }, t('msg.deleted'));
  else if (ev.type === 'm.room.encrypted') body = h('div', { class: 'msg-text deleted' }, t('msg.encrypted'));
  else if (content.msgtype === 'm.image' && typeof content.url === 'string') body = imageBody(content);
  else if (['m.file', 'm.video', 'm.audio'].includes(content.msgtype) && typeof content.url === 'string') body = fileBody(content);
  else if (content.msgtype === 'm.emote') body = h('div', { class: 'msg-text emote' }, `* ${name} `, linkify(String(content.body ?? '')));
  else body = textBody(content);
  if (content.msgtype === 'm.notice') body.classList.add('notice');
  const status = pending || ev.status === 'failed' ? h('div', { class: 'msg-status', role: ev.status === 'failed' ? 'alert' : null },
    ev.status === 'failed' ? [t('msg.failed'), ' ',
      h('button', { type: 'button', class: 'link-btn', onclick: () => opts.onRetry(ev) }, t('msg.retry')), ' ',
      h('button', { type: 'button', class: 'link-btn', onclick: () => opts.onDiscard(ev) }, t('msg.discard'))]
      : t('msg.sending')) : null;
  const li = h('li', {
    class: ['event', 'msg', own && 'own', opts.continuation && 'cont', pending && 'pending',
      ev.status === 'failed' && 'failed', !own && !redacted && mentionsMe(ev, room) && 'mention'],
    dataset: { eventId: ev.event_id }, tabindex: '-1', 'aria-labelledby': headId,
  },
  h('div', { class: 'msg-gutter' }, opts.continuation
    ? h('time', { class: 'msg-time-side', datetime: new Date(ts).toISOString(), 'aria-hidden': 'true' }, formatTime(ts))
    : avatar(ev.sender, name, room.memberAvatar(ev.sender))),
  h('div', { class: 'msg-main' },
    h('div', { class: ['msg-head', opts.continuation && 'sr-only'], id: headId },
      h('span', { class: 'msg-sender' }, name), ' ',
      h('time', { class: 'msg-time', datetime: new Date(ts).toISOString(), title: formatDateTime(ts) }, formatTime(ts))),
    redacted ? null : replyQuote(room, ev, opts.onJump),
    body,
    room.isEdited(ev) && !redacted ? h('span', { class: 'edited' }, t('msg.edited')) : null,
    redacted ? null : reactionsRow(room, ev),
    status,
    receiptsRow(room, opts.readers || [])),
  !ev.event_id.startsWith('~') && !redacted && ev.type === 'm.room.message'
    ? actions(room, ev, opts, own) : null);
  return li;
}
