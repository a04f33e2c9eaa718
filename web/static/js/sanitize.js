// Formatted message bodies (org.matrix.custom.html) are rebuilt from an allow-list: the HTML
// is parsed in an inert document (DOMParser: no scripts run, nothing loads), and only these
// elements are re-created in the page, with no attributes except a checked href on links.
// Everything else is dropped; the text inside unknown elements is kept as text.

const ALLOWED = new Set(['b', 'i', 'em', 'strong', 'code', 'pre', 'a', 'br', 'p', 'ul', 'ol',
  'li', 'blockquote']);
// Elements whose content is not text a person should see.
const DROP_WITH_CONTENT = new Set(['script', 'style', 'template', 'noscript', 'iframe', 'object',
  'embed', 'svg', 'math', 'head', 'title', 'mx-reply', 'textarea', 'select', 'button']);
const MAX_DEPTH = 32;

export function safeHref(raw) {
  if (typeof raw !== 'string') return null;
  const value = raw.trim();
  if (/^mxc:\/\/[^/\s]+\/[^/\s]+$/i.test(value)) return value;
  try {
    const u = new URL(value);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

function copy(node, doc, depth) {
  if (node.nodeType === Node.TEXT_NODE) return doc.createTextNode(node.nodeValue);
  if (node.nodeType !== Node.ELEMENT_NODE) return null;
  const tag = node.localName;
  if (DROP_WITH_CONTENT.has(tag)) return null;
  const frag = doc.createDocumentFragment();
  const target = ALLOWED.has(tag) && depth < MAX_DEPTH ? doc.createElement(tag) : frag;
  if (tag === 'a' && target !== frag) {
    const href = safeHref(node.getAttribute('href'));
    if (href) {
      target.setAttribute('href', href);
      target.setAttribute('rel', 'noopener noreferrer nofollow');
      target.setAttribute('target', '_blank');
    }
  }
  for (const child of node.childNodes) {
    const c = copy(child, doc, depth + 1);
    if (c) target.appendChild(c);
  }
  if (target !== frag) frag.appendChild(target);
  return frag;
}

// Inside tags, rename event-handler and style attributes before parsing. Not a safety measure
// (the allow-list below is): Chromium reports every inline handler or style it merely parses
// as a CSP violation, and hostile messages should not fill the console with those reports.
const TAG = /<[a-zA-Z][^>]*>/g;
const NOISY_ATTR = /([\s/"'])(on[a-z]*|style)(\s*=)/gi;

function quiet(html) {
  return html.replace(TAG, (tag) => tag.replace(NOISY_ATTR, '$1data-x-$2$3'));
}

/** A DocumentFragment holding the safe subset of `html`. */
export function sanitizeHtml(html, doc = document) {
  const parsed = new DOMParser().parseFromString(`<!doctype html><body>${quiet(String(html))}`,
    'text/html');
  const out = doc.createDocumentFragment();
  for (const child of parsed.body.childNodes) {
    const c = copy(child, doc, 0);
    if (c) out.appendChild(c);
  }
  return out;
}
