// Hash routing (#/room/!id:server, #/settings, …): the server only ever serves "/".
export class Router {
  constructor() {
    this.listeners = new Set();
    window.addEventListener('hashchange', () => this._emit());
  }

  current() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [name = '', ...rest] = raw.split('/');
    return { name, arg: rest.length ? decodeURIComponent(rest.join('/')) : null };
  }

  go(path, replace = false) {
    const target = `#/${path}`;
    if (location.hash === target) { this._emit(); return; }
    if (replace) history.replaceState(null, '', target);
    else location.hash = target;
    if (replace) this._emit();
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  _emit() {
    const r = this.current();
    for (const fn of this.listeners) fn(r);
  }
}
