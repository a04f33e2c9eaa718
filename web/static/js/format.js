// Dates, sizes and links — all returned as strings or DOM nodes built without innerHTML.
import { h } from './dom.js';
import { locale, t } from './i18n.js';

const DAY = 86400000;

export function startOfDay(ts) {
  const d = new Date(ts);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export function sameDay(a, b) { return startOfDay(a) === startOfDay(b); }

export function formatTime(ts) {
  return new Intl.DateTimeFormat(locale(), { hour: '2-digit', minute: '2-digit' }).format(ts);
}

export function formatDateTime(ts) {
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'short' }).format(ts);
}

/** "Today", "Yesterday", "Monday, 3 March" or "3 March 2024". */
export function dayLabel(ts, now = Date.now()) {
  const diff = Math.round((startOfDay(now) - startOfDay(ts)) / DAY);
  if (diff === 0) return t('time.today');
  if (diff === 1) return t('time.yesterday');
  const sameYear = new Date(ts).getFullYear() === new Date(now).getFullYear();
  const opts = sameYear ? { weekday: 'long', day: 'numeric', month: 'long' }
    : { day: 'numeric', month: 'long', year: 'numeric' };
  return new Intl.DateTimeFormat(locale(), opts).format(ts);
}

/** Short stamp for the room list: time today, weekday this week, else a date. */
export function shortStamp(ts, now = Date.now()) {
  if (!ts) return '';
  const diff = Math.round((startOfDay(now) - startOfDay(ts)) / DAY);
  if (diff === 0) return formatTime(ts);
  if (diff < 7) return new Intl.DateTimeFormat(locale(), { weekday: 'short' }).format(ts);
  return new Intl.DateTimeFormat(locale(), { day: 'numeric', month: 'short' }).format(ts);
}

export function formatSize(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) return '';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  let n = bytes;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]}]/gi;

/** Text with http(s) links made clickable: an array of text nodes and <a> elements. */
export function linkify(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    let href = null;
    try {
      const u = new URL(m[0]);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch { /* not a URL after all */ }
    out.push(href ? h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, m[0])
      : m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/** The localpart of a user ID: "@ann:example.org" -> "ann". */
export function localpart(userId) {
  return userId && userId.startsWith('@') ? userId.slice(1).split(':')[0] : userId || '';
}

/** Body text without a reply fallback ("> <@a:b> quoted" lines before a blank line). */
export function stripReplyFallback(body) {
  if (typeof body !== 'string' || !body.startsWith('> ')) return body;
  const lines = body.split('\n');
  let i = 0;
  while (i < lines.length && lines[i].startsWith('>')) i += 1;
  if (i < lines.length && lines[i] === '') i += 1;
  return lines.slice(i).join('\n');
}
