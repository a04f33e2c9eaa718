// Media: uploads, and authenticated downloads turned into blob: URLs (an <img src> cannot carry
// the access token; CSP allows img-src blob:). Object URLs are cached and revoked LRU-style.
import { ctx } from './ctx.js';
import { h } from './dom.js';

const MAX_CACHED = 300;
const cache = new Map(); // key -> Promise<string>

function remember(key, promise) {
  cache.set(key, promise);
  if (cache.size > MAX_CACHED) {
    const [oldKey, oldPromise] = cache.entries().next().value;
    cache.delete(oldKey);
    oldPromise.then((url) => URL.revokeObjectURL(url), () => {});
  }
  return promise;
}

/** A blob: URL for mxc (a thumbnail when `thumb` is given, falling back to the original). */
export function mediaUrl(mxc, thumb = null) {
  const key = thumb ? `${mxc}|${thumb.width}x${thumb.height}|${thumb.method || 'scale'}` : mxc;
  const hit = cache.get(key);
  if (hit) {
    cache.delete(key); // most recently used goes last
    cache.set(key, hit);
    return hit;
  }
  const p = ctx.api.mediaBlob(mxc, thumb)
    .catch((e) => {
      if (thumb && e.status !== 0) return ctx.api.mediaBlob(mxc);
      throw e;
    })
    .then((blob) => URL.createObjectURL(blob));
  p.catch(() => cache.delete(key));
  return remember(key, p);
}

/** An <img> whose source arrives when the authenticated download finishes. */
export function mediaImage(mxc, thumb, alt, cls = '') {
  const img = h('img', { alt: alt || '', class: `${cls} loading`.trim(), decoding: 'async' });
  mediaUrl(mxc, thumb).then((url) => {
    img.src = url;
    img.classList.remove('loading');
  }, () => {
    img.classList.remove('loading');
    img.classList.add('broken');
  });
  return img;
}

export async function downloadMedia(mxc, filename) {
  const url = await mediaUrl(mxc);
  const a = h('a', { href: url, download: filename || 'download' });
  document.body.appendChild(a);
  a.click();
  a.remove();
}

export async function imageSize(file) {
  try {
    const bmp = await createImageBitmap(file);
    const size = { w: bmp.width, h: bmp.height };
    bmp.close();
    return size;
  } catch {
    return null;
  }
}

/** Upload a file; the content of the m.room.message that shares it. */
export async function uploadAsMessage(file) {
  const { content_uri: url } = await ctx.api.upload(file, file.name);
  const info = { mimetype: file.type || 'application/octet-stream', size: file.size };
  const isImage = /^image\/(png|jpeg|gif|webp)$/.test(file.type);
  if (isImage) {
    const size = await imageSize(file);
    if (size) Object.assign(info, size);
  }
  return { msgtype: isImage ? 'm.image' : 'm.file', body: file.name, filename: file.name, url, info };
}
