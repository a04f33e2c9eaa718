// The server renders index.html with a map from logical asset paths to their content-hashed
// URLs (translations, images); modules and stylesheets are already linked by hashed URL.

let map = null;

export function assetUrl(path) {
  if (map === null) {
    const meta = document.querySelector('meta[name="nexa-assets"]');
    try { map = meta ? JSON.parse(meta.content) : {}; } catch { map = {}; }
  }
  return map[path] || `/static/${path}`;
}
