// The Matrix Client-Server API over fetch. Every failure becomes an ApiError with an errcode:
// the server's (M_FORBIDDEN, M_LIMIT_EXCEEDED with retryAfterMs, ...) or NX_NETWORK when the
// server could not be reached at all.

const CS = '/_matrix/client/v3';

export class ApiError extends Error {
  constructor(status, body = {}) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.errcode = body.errcode || (status ? 'M_UNKNOWN' : 'NX_NETWORK');
    this.data = body;
    this.retryAfterMs = typeof body.retry_after_ms === 'number' ? body.retry_after_ms : null;
  }
}

const enc = encodeURIComponent;

export function txnId() {
  const rnd = crypto.getRandomValues(new Uint32Array(2));
  return `nx${Date.now().toString(36)}${rnd[0].toString(36)}${rnd[1].toString(36)}`;
}

export class Api {
  constructor(session = null) {
    this.session = session;
    this.onUnauthorized = null; // called when the server no longer knows our token
  }

  get userId() { return this.session?.userId; }

  async request(method, path, { body, query, prefix = CS, headers = {}, raw, auth = true,
    signal } = {}) {
    let url = prefix + path;
    if (query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) qs.set(k, v);
      const s = qs.toString();
      if (s) url += `?${s}`;
    }
    const h = { ...headers };
    if (auth && this.session) h.Authorization = `Bearer ${this.session.accessToken}`;
    let payload;
    if (raw !== undefined) payload = raw;
    else if (body !== undefined) {
      h['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(url, { method, headers: h, body: payload, signal, credentials: 'omit',
        cache: 'no-store' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, { errcode: 'NX_NETWORK', error: String(e.message || e) });
    }
    let data = {};
    const ctype = r.headers.get('Content-Type') || '';
    if (ctype.includes('json')) {
      try { data = await r.json(); } catch { data = {}; }
    }
    if (!r.ok) {
      const err = new ApiError(r.status, data);
      if (r.status === 401 && auth && this.session
          && (err.errcode === 'M_UNKNOWN_TOKEN' || err.errcode === 'M_MISSING_TOKEN')) {
        this.onUnauthorized?.(err);
      }
      throw err;
    }
    return data;
  }

  get(path, opts) { return this.request('GET', path, opts); }
  post(path, body = {}, opts = {}) { return this.request('POST', path, { ...opts, body }); }
  put(path, body = {}, opts = {}) { return this.request('PUT', path, { ...opts, body }); }

  // --- accounts ---------------------------------------------------------------------------
  login(user, password) {
    return this.post('/login', {
      type: 'm.login.password', identifier: { type: 'm.id.user', user }, password,
      initial_device_display_name: 'Nexa Web',
    }, { auth: false });
  }

  /** The server's password policy (MSC2000 keys; {} when it has none). */
  passwordPolicy() { return this.get('/password_policy', { auth: false }); }

  /** Registration with user-interactive auth: dummy stage, or a registration token. */
  async register(username, password, token = null) {
    const body = { username, password, initial_device_display_name: 'Nexa Web' };
    let session;
    try {
      return await this.post('/register', body, { auth: false });
    } catch (e) {
      if (e.status !== 401 || !e.data.flows) throw e;
      session = e.data.session;
      const stages = e.data.flows.map((f) => f.stages[0]);
      if (stages.includes('m.login.dummy')) {
        return this.post('/register', { ...body, auth: { type: 'm.login.dummy', session } },
          { auth: false });
      }
      if (stages.includes('m.login.registration_token')) {
        if (!token) {
          const err = new ApiError(401, { errcode: 'NX_TOKEN_REQUIRED', error: 'token required' });
          throw err;
        }
        return this.post('/register', {
          ...body, auth: { type: 'm.login.registration_token', token, session },
        }, { auth: false });
      }
      throw e;
    }
  }

  usernameAvailable(username) {
    return this.get('/register/available', { query: { username }, auth: false });
  }

  usernameSuggestions(username) {
    return this.get('/register/suggestions', { query: { username }, prefix: '/_nexa/client/v1',
      auth: false });
  }

  logout() { return this.post('/logout', {}); }
  whoami() { return this.get('/account/whoami'); }

  // --- rooms and events -------------------------------------------------------------------
  createRoom(body) { return this.post('/createRoom', body); }
  join(idOrAlias) { return this.post(`/join/${enc(idOrAlias)}`, {}); }
  leave(roomId) { return this.post(`/rooms/${enc(roomId)}/leave`, {}); }
  invite(roomId, userId) { return this.post(`/rooms/${enc(roomId)}/invite`, { user_id: userId }); }

  send(roomId, type, content, txn = txnId()) {
    return this.put(`/rooms/${enc(roomId)}/send/${enc(type)}/${enc(txn)}`, content);
  }

  redact(roomId, eventId, reason) {
    return this.put(`/rooms/${enc(roomId)}/redact/${enc(eventId)}/${enc(txnId())}`,
      reason ? { reason } : {});
  }

  sendState(roomId, type, stateKey, content) {
    return this.put(`/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`, content);
  }

  messages(roomId, from, limit = 30) {
    return this.get(`/rooms/${enc(roomId)}/messages`, { query: { from, dir: 'b', limit } });
  }

  event(roomId, eventId) { return this.get(`/rooms/${enc(roomId)}/event/${enc(eventId)}`); }

  receipt(roomId, eventId, type = 'm.read') {
    return this.post(`/rooms/${enc(roomId)}/receipt/${enc(type)}/${enc(eventId)}`, {});
  }

  readMarkers(roomId, markers) { return this.post(`/rooms/${enc(roomId)}/read_markers`, markers); }

  typing(roomId, typing, timeout = 6000) {
    return this.put(`/rooms/${enc(roomId)}/typing/${enc(this.userId)}`,
      typing ? { typing, timeout } : { typing });
  }

  // --- user data --------------------------------------------------------------------------
  setAccountData(type, content) {
    return this.put(`/user/${enc(this.userId)}/account_data/${enc(type)}`, content);
  }

  setRoomAccountData(roomId, type, content) {
    return this.put(`/user/${enc(this.userId)}/rooms/${enc(roomId)}/account_data/${enc(type)}`,
      content);
  }

  profile(userId) { return this.get(`/profile/${enc(userId)}`); }
  setDisplayName(name) { return this.put(`/profile/${enc(this.userId)}/displayname`, { displayname: name }); }
  setAvatarUrl(url) { return this.put(`/profile/${enc(this.userId)}/avatar_url`, { avatar_url: url }); }

  searchUsers(term, limit = 20) { return this.post('/user_directory/search', { search_term: term, limit }); }

  publicRooms(term, since) {
    const body = { limit: 30 };
    if (term) body.filter = { generic_search_term: term };
    if (since) body.since = since;
    return this.post('/publicRooms', body);
  }

  // --- media ------------------------------------------------------------------------------
  upload(file, filename) {
    return this.request('POST', '/upload', {
      prefix: '/_matrix/media/v3', raw: file, query: { filename },
      headers: { 'Content-Type': file.type || 'application/octet-stream' },
    });
  }

  /** Authenticated media: a Blob (the browser cannot send our token from an <img src>). */
  async mediaBlob(mxc, thumb = null) {
    const m = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc || '');
    if (!m) throw new ApiError(400, { errcode: 'M_INVALID_PARAM', error: 'not an mxc URI' });
    let url = `/_matrix/client/v1/media/${thumb ? 'thumbnail' : 'download'}/${enc(m[1])}/${enc(m[2])}`;
    if (thumb) url += `?width=${thumb.width}&height=${thumb.height}&method=${thumb.method || 'scale'}`;
    let r;
    try {
      r = await fetch(url, { headers: { Authorization: `Bearer ${this.session.accessToken}` } });
    } catch (e) {
      throw new ApiError(0, { errcode: 'NX_NETWORK', error: String(e.message || e) });
    }
    if (!r.ok) {
      let data = {};
      try { data = await r.json(); } catch { /* not JSON */ }
      throw new ApiError(r.status, data);
    }
    return r.blob();
  }
}
