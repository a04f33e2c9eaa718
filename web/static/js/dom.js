// Tiny DOM helpers. User content only ever reaches the page through textContent or attribute
// values set with setAttribute/properties — never through innerHTML.

const BOOL_PROPS = new Set(['disabled', 'checked', 'hidden', 'selected', 'multiple', 'required',
  'autofocus', 'readOnly', 'open', 'indeterminate']);

/** h('button', {class: 'x', onclick: fn, 'aria-label': '…'}, 'text', child, [more]) */
export function h(tag, props, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false && !BOOL_PROPS.has(k)) continue;
      if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'style') Object.assign(el.style, v); // CSSOM: allowed under style-src 'self'
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (BOOL_PROPS.has(k)) el[k] = !!v;
      else if (k === 'value') el.value = v;
      else if (k === 'ref') v(el);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

/**
 * Keyed list reconciliation: items = [{key, version, build()}]. Nodes whose key and version are
 * unchanged are kept (focus, images and scroll anchors survive); others are rebuilt; order fixed.
 */
export function reconcile(container, items, cache) {
  const seen = new Set();
  let cursor = container.firstChild;
  for (const item of items) {
    seen.add(item.key);
    let entry = cache.get(item.key);
    if (!entry || entry.version !== item.version) {
      const node = item.build();
      if (entry) {
        if (entry.node === cursor) cursor = cursor.nextSibling;
        entry.node.remove();
      }
      entry = { node, version: item.version };
      cache.set(item.key, entry);
    }
    if (entry.node === cursor) cursor = cursor.nextSibling;
    else container.insertBefore(entry.node, cursor);
  }
  for (const [key, entry] of cache) {
    if (!seen.has(key)) {
      entry.node.remove();
      cache.delete(key);
    }
  }
}

/** Debounce: fn runs once, `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const d = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  d.flush = (...args) => { if (timer) { clearTimeout(timer); timer = null; fn(...args); } };
  d.cancel = () => { clearTimeout(timer); timer = null; };
  return d;
}

let idCounter = 0;
export function uid(prefix = 'nx') {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** Focus the first focusable element inside el. */
export function focusFirst(el) {
  const f = el.querySelector('[autofocus], input:not([type=hidden]), textarea, select, button, [href], [tabindex]:not([tabindex="-1"])');
  if (f) f.focus();
}
