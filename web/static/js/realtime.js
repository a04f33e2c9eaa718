// A small Socket.IO v5 client (Engine.IO v4, WebSocket transport only) for the homeserver's
// realtime channel at /_nexa/socket.io/.
//
// Why hand-written: the homeserver and its UI must run on a machine with nothing but Python
// 3.11 — no npm, no bundler, no build step — so the UI cannot pull in socket.io-client. The
// subset needed here is small and is exercised against the real server by tests/web/.
//
// Wire format (one packet per WebSocket text frame):
//   Engine.IO:  "0{json}" open (sid, pingInterval, pingTimeout)   "1" close
//               "2" ping from the server -> we answer "3" pong      "4…" a Socket.IO packet
//               "6" noop
//   Socket.IO (after the "4"): "0{auth}" connect the "/" namespace (we send it; the server
//               answers "0{sid}"), "1" disconnect, "2[ev, …]" event, "2<id>[ev, …]" event
//               wanting an ack, "3<id>[…]" ack, "4{message, data}" connect error.
// So: server "0{…}" -> we send "40{token, since}" -> server "40{sid}" -> server "42["sync",{…}]".
//
// The server emits "sync" with exactly a /sync response body. We remember its next_batch and
// pass it as `since` whenever we reconnect (exponential backoff with jitter), so nothing is
// missed and nothing repeats. With `ack: true` each sync asks for an acknowledgement, which we
// send only after the handler has applied it; the server then computes the next one from
// that point, like a /sync request from this device (so our transaction IDs come back). "sync_error" {errcode} precedes a server-side disconnect; an
// unknown or missing token means the session is over and we stop reconnecting.

const BACKOFF_MS = [300, 1000, 2000, 4000, 8000, 15000, 30000];
const AUTH_ERRORS = new Set(['M_UNKNOWN_TOKEN', 'M_MISSING_TOKEN']);
const ACK_TIMEOUT_MS = 10000;

export class Realtime {
  constructor({ token, since = null, filter = null, ack = false, onSync, onStatus, onAuthError,
    path = '/_nexa/socket.io/' }) {
    this.token = token;
    this.since = since;
    this.filter = filter;
    this.ack = ack;
    this.onSync = onSync;
    this.onStatus = onStatus || (() => {});
    this.onAuthError = onAuthError || (() => {});
    this.path = path;
    this.ws = null;
    this.status = 'idle';
    this.connected = false;
    this.stopped = true;
    this.attempt = 0;
    this.retryTimer = null;
    this.heartbeat = null;
    this.heartbeatMs = 45000;
    this.ackId = 0;
    this.acks = new Map();
    this.lastError = null;
    this._wake = () => { if (!this.stopped && !this.ws) this._connectNow(); };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener('online', this._wake);
    document.addEventListener('visibilitychange', this._wake);
    this._connectNow();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this._wake);
    document.removeEventListener('visibilitychange', this._wake);
    clearTimeout(this.retryTimer);
    this._teardown();
    this._setStatus('idle');
  }

  /** Emit an event; resolves with the server's acknowledgement (or rejects on timeout). */
  emit(event, data) {
    if (!this.connected) return Promise.reject(new Error('not connected'));
    this.ackId += 1;
    const id = this.ackId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error('ack timeout'));
      }, ACK_TIMEOUT_MS);
      this.acks.set(id, (args) => { clearTimeout(timer); resolve(args[0]); });
      this._send(`42${id}${JSON.stringify([event, data])}`);
    });
  }

  // --- connection lifecycle ------------------------------------------------------------------

  _url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}${this.path}?EIO=4&transport=websocket`;
  }

  _connectNow() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this._teardown();
    this._setStatus('connecting');
    let ws;
    try {
      ws = new WebSocket(this._url());
    } catch (e) {
      this.lastError = String(e);
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onmessage = (m) => { if (this.ws === ws) this._onFrame(m.data); };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._down();
    };
    ws.onerror = () => { /* a close event follows */ };
  }

  _teardown() {
    clearTimeout(this.heartbeat);
    const ws = this.ws;
    this.ws = null;
    this.connected = false;
    for (const [, cb] of this.acks) cb([{ errcode: 'NX_DISCONNECTED' }]);
    this.acks.clear();
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch { /* already closed */ }
    }
  }

  _down() {
    this._teardown();
    if (this.stopped) return;
    this._scheduleRetry();
  }

  _scheduleRetry(minMs = 0) {
    if (this.stopped) return;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    const delay = Math.max(minMs, base * (0.8 + Math.random() * 0.4));
    this._setStatus('offline');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connectNow(), delay);
  }

  _setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.onStatus(s);
  }

  _send(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  _armHeartbeat() {
    clearTimeout(this.heartbeat);
    // No ping from the server within pingInterval + pingTimeout: the link is dead.
    this.heartbeat = setTimeout(() => this._down(), this.heartbeatMs);
  }

  // --- Engine.IO --------------------------------------------------------------------------

  _onFrame(data) {
    if (typeof data !== 'string' || !data.length) return; // binary frames are not used here
    const type = data[0];
    const rest = data.slice(1);
    if (type === '0') {
      let open = {};
      try { open = JSON.parse(rest); } catch { /* defaults */ }
      this.heartbeatMs = (open.pingInterval || 25000) + (open.pingTimeout || 20000);
      this._armHeartbeat();
      const auth = { token: this.token, since: this.since };
      if (this.filter) auth.filter = this.filter;
      if (this.ack) auth.ack = true;
      this._send(`40${JSON.stringify(auth)}`);
    } else if (type === '2') {
      this._armHeartbeat();
      this._send(`3${rest}`);
    } else if (type === '1') {
      this._down();
    } else if (type === '4') {
      this._onPacket(rest);
    }
    // '3' (pong) and '6' (noop) need nothing.
  }

  // --- Socket.IO --------------------------------------------------------------------------

  _onPacket(p) {
    const type = p[0];
    let i = 1;
    if (p[i] === '/') { // a namespace other than "/": not ours
      const comma = p.indexOf(',', i);
      if (p.slice(i, comma < 0 ? undefined : comma) !== '/') return;
      i = comma < 0 ? p.length : comma + 1;
    }
    let idText = '';
    while (i < p.length && p[i] >= '0' && p[i] <= '9') idText += p[i++];
    let payload = null;
    if (i < p.length) {
      try { payload = JSON.parse(p.slice(i)); } catch { return; }
    }
    if (type === '0') {
      this.connected = true;
      this.attempt = 0;
      this.lastError = null;
      this._setStatus('connected');
    } else if (type === '1') {
      this._down();
    } else if (type === '2' && Array.isArray(payload)) {
      this._onEvent(payload[0], payload.slice(1), idText);
    } else if (type === '3' && Array.isArray(payload)) {
      const cb = this.acks.get(Number(idText));
      this.acks.delete(Number(idText));
      if (cb) cb(payload);
    } else if (type === '4') {
      const errcode = payload?.data?.errcode || '';
      this.lastError = errcode || payload?.message || 'connect error';
      if (AUTH_ERRORS.has(errcode)) {
        this._fatal(errcode, payload);
        return;
      }
      this._teardown();
      this._scheduleRetry(errcode === 'M_LIMIT_EXCEEDED' ? 5000 : 0);
    }
  }

  _onEvent(name, args, ackId) {
    if (name === 'sync') {
      const body = args[0];
      if (!body || typeof body.next_batch !== 'string') return;
      try {
        this.onSync(body);
      } catch (e) {
        console.error('sync handler failed', e); // eslint-disable-line no-console
      }
      this.since = body.next_batch;
    } else if (name === 'sync_error') {
      const errcode = args[0]?.errcode || 'M_UNKNOWN';
      this.lastError = errcode;
      if (AUTH_ERRORS.has(errcode)) this._fatal(errcode, args[0]);
    }
    if (ackId) this._send(`43${ackId}[]`);
  }

  _fatal(errcode, detail) {
    this.stop();
    this._setStatus('unauthorized');
    this.onAuthError({ errcode, detail });
  }
}
