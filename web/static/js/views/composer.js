// Writing: the message box with drafts (kept per room), replies, edits, attachments (button,
// paste, drag and drop), typing notices, Enter to send and Shift+Enter for a new line.
import { ctx } from '../ctx.js';
import { h, replace } from '../dom.js';
import { stripReplyFallback } from '../format.js';
import { t } from '../i18n.js';
import { icon } from '../icons.js';
import { uploadAsMessage } from '../media.js';
import { errorText, showError, toast } from '../ui.js';

const TYPING_TIMEOUT_MS = 6000;
const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;

export function mountComposer(container, room, { onSent }) {
  let mode = null; // {kind: 'reply'|'edit', event}
  const context = h('div', { class: 'composer-context', hidden: true, 'aria-live': 'polite' });
  const input = h('textarea', { class: 'composer-input', rows: '1', 'aria-label': t('composer.label'),
    placeholder: t('composer.placeholder', { room: ctx.store.roomName(room) }), enterkeyhint: 'send' });
  const file = h('input', { type: 'file', multiple: true, hidden: true, tabindex: '-1', 'aria-hidden': 'true' });
  const attach = h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('composer.attach'),
    title: t('composer.attach'), onclick: () => file.click() }, icon('attach'));
  const send = h('button', { type: 'submit', class: 'icon-btn send-btn', 'aria-label': t('composer.send'),
    title: t('composer.send') }, icon('send'));
  const form = h('form', { class: 'composer', onsubmit: (e) => { e.preventDefault(); submit(); } },
    context, h('div', { class: 'composer-row' }, attach, file, input, send));
  container.append(form);

  // --- drafts --------------------------------------------------------------------------------
  const draft = ctx.drafts.get(room.id);
  input.value = draft.body || '';
  if (draft.reply_to && room.byId.get(draft.reply_to)) setMode('reply', room.byId.get(draft.reply_to), false);
  const saveDraft = () => ctx.drafts.set(room.id, input.value,
    mode?.kind === 'reply' ? { reply_to: mode.event.event_id } : {});

  // --- typing notices ----------------------------------------------------------------------
  let typingOn = false;
  let typingSentAt = 0;
  let idle = null;
  function sendTyping(on) {
    const payload = { room_id: room.id, typing: on, timeout: TYPING_TIMEOUT_MS };
    const viaHttp = () => ctx.api.typing(room.id, on, TYPING_TIMEOUT_MS).catch(() => {});
    if (ctx.rt?.connected) ctx.rt.emit('typing', payload).catch(viaHttp); else viaHttp();
  }
  function typing(on) {
    clearTimeout(idle);
    if (!ctx.settings.get('send_typing')) return;
    if (on) {
      idle = setTimeout(() => typing(false), TYPING_IDLE_MS);
      if (typingOn && Date.now() - typingSentAt < TYPING_REFRESH_MS) return;
      typingOn = true;
      typingSentAt = Date.now();
      sendTyping(true);
    } else if (typingOn) {
      typingOn = false;
      sendTyping(false);
    }
  }

  function autosize() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  function setMode(kind, event, focus = true) {
    mode = kind ? { kind, event } : null;
    if (!mode) {
      context.hidden = true;
      replace(context);
      return;
    }
    const c = room.displayContent(event) || {};
    const label = kind === 'edit' ? t('composer.editing')
      : t('composer.replying_to', { name: room.memberName(event.sender) });
    replace(context, h('span', { class: 'context-icon' }, icon(kind === 'edit' ? 'edit' : 'reply')),
      h('span', { class: 'context-text' }, h('strong', {}, label), ' ',
        h('span', { class: 'context-quote' }, stripReplyFallback(String(c.body || '')).slice(0, 140))),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('composer.cancel'),
        onclick: () => cancel() }, icon('close')));
    context.hidden = false;
    if (focus) input.focus();
  }

  function cancel() {
    const wasEdit = mode?.kind === 'edit';
    setMode(null);
    if (wasEdit) input.value = ctx.drafts.get(room.id).body || '';
    autosize();
    saveDraft();
    input.focus();
  }

  async function submit() {
    const text = input.value;
    if (!text.trim()) return;
    const current = mode;
    input.value = '';
    autosize();
    setMode(null);
    typing(false);
    ctx.drafts.clear(room.id);
    try {
      if (current?.kind === 'edit') {
        await ctx.store.editMessage(room.id, current.event, text.trim());
      } else {
        let content = { msgtype: 'm.text', body: text };
        if (text.startsWith('/me ')) content = { msgtype: 'm.emote', body: text.slice(4) };
        if (current?.kind === 'reply') {
          content['m.relates_to'] = { 'm.in_reply_to': { event_id: current.event.event_id } };
          if (current.event.sender !== ctx.store.me) content['m.mentions'] = { user_ids: [current.event.sender] };
        }
        onSent?.();
        await ctx.store.sendMessage(room.id, content);
      }
    } catch (e) {
      showError(e);
    }
  }

  async function uploadFiles(files) {
    for (const f of files) {
      const note = toast(t('composer.uploading', { name: f.name }), 'info', 0);
      try {
        const content = await uploadAsMessage(f);
        note.remove();
        onSent?.();
        await ctx.store.sendMessage(room.id, content);
      } catch (e) {
        note.remove();
        toast(t('composer.upload_failed', { name: f.name, reason: errorText(e) }), 'error', 8000);
      }
    }
  }

  input.addEventListener('input', () => {
    autosize();
    saveDraft();
    typing(!!input.value.trim());
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey) {
      e.preventDefault();
      submit();
    } else if (e.key === 'Escape' && mode) {
      e.preventDefault();
      cancel();
    } else if (e.key === 'ArrowUp' && !input.value) {
      const mine = [...room.timeline].reverse().find((ev) => ev.sender === ctx.store.me
        && ev.type === 'm.room.message' && !ev.unsigned?.redacted_because
        && ['m.text', 'm.emote'].includes(ev.content?.msgtype));
      if (mine) { e.preventDefault(); startEdit(mine); }
    }
  });
  input.addEventListener('blur', () => typing(false));
  input.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) { e.preventDefault(); uploadFiles(files); }
  });
  file.addEventListener('change', () => { uploadFiles([...file.files]); file.value = ''; });
  const drop = (e) => {
    if (!e.dataTransfer?.types?.includes('Files')) return;
    e.preventDefault();
    if (e.type === 'drop') uploadFiles([...e.dataTransfer.files]);
  };
  container.addEventListener('dragover', drop);
  container.addEventListener('drop', drop);
  requestAnimationFrame(autosize);

  function startEdit(ev) {
    const c = room.displayContent(ev) || {};
    setMode('edit', ev);
    input.value = String(c.body || '');
    autosize();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  return {
    focus: () => input.focus(),
    startReply: (ev) => { setMode('reply', ev); saveDraft(); },
    startEdit,
    destroy() { typing(false); ctx.drafts.flushAll(); },
    input,
  };
}
