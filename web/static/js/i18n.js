// Translations: flat-ish JSON dictionaries per language (web/static/i18n/<code>.json), keys
// like "room.send". Plural entries are objects keyed by Intl.PluralRules categories.
import { assetUrl } from './assets.js';

export const LANGUAGES = { en: 'English', ru: 'Русский' };

let lang = 'en';
let dict = {};
let fallback = {};
let rules = new Intl.PluralRules('en');
const listeners = new Set();

export function detectLanguage() {
  for (const l of navigator.languages || [navigator.language || 'en']) {
    const code = String(l).toLowerCase().split('-')[0];
    if (code in LANGUAGES) return code;
  }
  return 'en';
}

async function fetchDict(code) {
  const r = await fetch(assetUrl(`i18n/${code}.json`), { credentials: 'same-origin' });
  if (!r.ok) throw new Error(`translations ${code}: HTTP ${r.status}`);
  return r.json();
}

export async function setLanguage(code) {
  if (!(code in LANGUAGES)) code = 'en';
  // English is the fallback for any missing key; both load in parallel.
  const [en, chosen] = await Promise.all([
    Object.keys(fallback).length ? fallback : fetchDict('en'),
    code === 'en' ? null : fetchDict(code)]);
  fallback = en;
  dict = chosen || fallback;
  lang = code;
  rules = new Intl.PluralRules(code);
  document.documentElement.lang = code;
  for (const fn of listeners) fn(code);
}

export function currentLanguage() { return lang; }

export function onLanguageChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function lookup(d, key) {
  return Object.prototype.hasOwnProperty.call(d, key) ? d[key] : undefined;
}

/** t('room.typing_one', {name: 'Ann'}); plural entries pick a form from vars.count. */
export function t(key, vars = {}) {
  let v = lookup(dict, key);
  if (v === undefined) v = lookup(fallback, key);
  if (v === undefined) return key;
  if (typeof v === 'object') {
    const n = Number(vars.count ?? 0);
    v = v[rules.select(n)] ?? v.other ?? '';
  }
  return String(v).replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** Fill [data-i18n] (textContent) and [data-i18n-label] (aria-label) inside root. */
export function translateTree(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  }
}

export function locale() {
  const nav = navigator.language || '';
  return nav.toLowerCase().startsWith(lang) ? nav : lang;
}
