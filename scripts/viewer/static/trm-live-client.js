// @trm-live/client: the browser client of trm-live's /ws-live WebSocket
// (contract v1 with replay). No dependencies, one ES module. The protocol
// it speaks is described in docs/broadcaster.md and docs/replay.md of the
// trm-live repository; clients/js/README.md shows how to use it.

/** The package version; equal to the repository's VERSION file (tested). */
export const VERSION = "0.1.0";

/** WebSocket close codes the server uses. */
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4401,
});

/** Codes of the server's error frames, plus the client's own "disconnected". */
export const ErrorCodes = Object.freeze({
  BAD_REQUEST: "bad_request",
  FORBIDDEN: "forbidden",
  NOT_FOUND: "not_found",
  TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions",
  UNAVAILABLE: "unavailable",
  DISCONNECTED: "disconnected",
});

/** Connection states, emitted with the "state" event. */
export const States = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  CLOSED: "closed",
  UNAUTHORIZED: "unauthorized",
  UNAVAILABLE: "unavailable",
});

export const DEFAULT_BACKOFF = Object.freeze({
  initial: 500, // ms: the cap of the first retry's delay
  max: 30000, // ms: no delay is longer
  multiplier: 2,
  stable: 10000, // ms a connection must stay open to reset the attempt count
  unavailableInitial: 5000, // ms: after close 1013, the delay is at least this
  unavailableMax: 60000, // ms: and at most this
});

const TOPIC_PREFIX = "event:";

/** topicOf returns the topic of an event id, or the topic itself. */
export function topicOf(eventOrTopic) {
  return String(eventOrTopic).startsWith(TOPIC_PREFIX) ? String(eventOrTopic) : TOPIC_PREFIX + eventOrTopic;
}

/**
 * backoffDelay is the wait before reconnect attempt `attempt` (0 for the
 * first retry): full jitter, a uniformly random delay between 0 and
 * min(max, initial * multiplier^attempt). After close 1013 (`unavailable`)
 * the same is computed with unavailableMax as the cap and
 * unavailableInitial added, so the server is left alone longer.
 */
export function backoffDelay(attempt, opts = DEFAULT_BACKOFF, random = Math.random, unavailable = false) {
  const o = { ...DEFAULT_BACKOFF, ...opts };
  const exp = o.initial * Math.pow(o.multiplier, Math.max(0, attempt));
  if (unavailable) {
    const ceil = Math.min(Math.max(0, o.unavailableMax - o.unavailableInitial), exp);
    return o.unavailableInitial + random() * ceil;
  }
  return random() * Math.min(o.max, exp);
}

function tsOf(p) {
  const t = Date.parse(p && p.ts);
  return Number.isNaN(t) ? -Infinity : t;
}

/**
 * mergeLatest merges positions into a Map device_id -> latest position,
 * keeping for each device the position with the greatest `ts`: an item not
 * newer than what the map holds is dropped, so nothing ever goes back in
 * time. It returns the items that were taken, in their order.
 */
export function mergeLatest(latest, positions) {
  const taken = [];
  for (const p of positions || []) {
    if (!p || typeof p.device_id !== "string") continue;
    const held = latest.get(p.device_id);
    if (held && tsOf(p) <= tsOf(held)) continue;
    latest.set(p.device_id, p);
    taken.push(p);
  }
  return taken;
}

/** A tiny event emitter: on returns a function that removes the listener. */
class Emitter {
  constructor() { this._l = new Map(); }
  on(name, fn) {
    if (!this._l.has(name)) this._l.set(name, new Set());
    this._l.get(name).add(fn);
    return () => this.off(name, fn);
  }
  off(name, fn) { const s = this._l.get(name); if (s) s.delete(fn); }
  once(name, fn) {
    const off = this.on(name, (...a) => { off(); fn(...a); });
    return off;
  }
  emit(name, ...args) {
    const s = this._l.get(name);
    if (!s) return;
    for (const fn of [...s]) {
      try { fn(...args); } catch (e) { setTimeout(() => { throw e; }, 0); }
    }
  }
}

function defaultURL() {
  const loc = globalThis.location;
  if (!loc) throw new Error("@trm-live/client: no url given and no window.location");
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws-live";
}

function subscribeFields(msg, opts) {
  if (opts.max_hz != null) msg.max_hz = opts.max_hz;
  if (opts.devices != null) msg.devices = [...opts.devices];
  return msg;
}

function clientError(code, message, extra) {
  const e = new Error(message);
  e.code = code;
  return Object.assign(e, extra || {});
}

/**
 * Replay is one replay of a topic, made by LiveClient.replay. Its controls
 * return promises of the server's replay_state answer.
 */
export class Replay extends Emitter {
  constructor(client, topic, opts) {
    super();
    this.client = client;
    this.topic = topic;
    this.options = { ...opts };
    /** "starting", "playing", "paused", "ended", "live" or "stopped" */
    this.state = "starting";
    /** The last status the server sent (from, to, speed, state, at, wall). */
    this.status = null;
    /** device_id -> latest replayed position. */
    this.latest = new Map();
    this._resumeFrom = null; // the clock to restart from after a reconnect
  }
  pause() { return this.client._control(this, { action: "pause" }); }
  resume() { return this.client._control(this, { action: "resume" }); }
  seek(to) { return this.client._control(this, { action: "seek", to: toISO(to) }); }
  speed(speed) { return this.client._control(this, { action: "speed", speed }); }
  /** stop ends the replay early (unsubscribe with "replay":true). */
  stop() { return this.client._stopReplay(this); }
}

function toISO(t) {
  if (t instanceof Date) return t.toISOString();
  return String(t);
}

/**
 * LiveClient connects to /ws-live, keeps it connected and subscribed, and
 * holds the latest position per device of every topic.
 */
export class LiveClient extends Emitter {
  constructor(options = {}) {
    super();
    this.url = options.url || null;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this._WS = options.WebSocket || globalThis.WebSocket;
    this._random = options.random || Math.random;
    this._setTimeout = options.setTimeout || ((f, ms) => setTimeout(f, ms));
    this._clearTimeout = options.clearTimeout || ((h) => clearTimeout(h));
    this.state = States.CLOSED;
    /** Why the last socket ended: {code, reason}, or null. */
    this.lastClose = null;
    /** Reconnect attempts since the last stable connection. */
    this.attempt = 0;
    this._ws = null;
    this._want = false; // connect() called and not close()d / unauthorized
    this._retry = null;
    this._stableTimer = null;
    this._seq = 0;
    this._pending = new Map(); // request id -> {kind, topic, resolve, reject, replay}
    this._live = new Map(); // topic -> {options, subscribed, latest: Map, retry}
    this._replays = new Map(); // topic -> Replay
  }

  // ---- connection ----

  /** connect opens the connection (again, after close() or unauthorized). */
  connect() {
    this._want = true;
    if (this._ws) return;
    this._clearRetry();
    this._open();
  }

  /** close closes the connection for good; state "closed". */
  close() {
    this._want = false;
    this._clearRetry();
    this._dropSocket(1000, "client closed");
    this._setState(States.CLOSED, {});
  }

  /** reconnect drops the socket and connects at once (e.g. after a new login). */
  reconnect() {
    this._want = true;
    this._clearRetry();
    this._dropSocket(1000, "reconnect");
    this.attempt = 0;
    this._open();
  }

  _setState(state, info) {
    if (this.state === state && state !== States.CONNECTING && state !== States.UNAVAILABLE) return;
    this.state = state;
    this.emit("state", state, info || {});
  }

  _open() {
    let ws;
    this._setState(States.CONNECTING, { attempt: this.attempt });
    try {
      ws = new this._WS(this.url || defaultURL());
    } catch (e) {
      this.emit("error", clientError(ErrorCodes.DISCONNECTED, "cannot open WebSocket: " + e.message));
      this._scheduleRetry(false);
      return;
    }
    this._ws = ws;
    ws.onopen = () => { if (ws === this._ws) this._onOpen(); };
    ws.onmessage = (ev) => { if (ws === this._ws) this._onMessage(ev.data); };
    ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason || ""); };
    ws.onerror = () => {}; // a close always follows
  }

  _dropSocket(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    this._clearStable();
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code, reason); } catch (e) { /* already closed */ }
    this._disconnected();
  }

  _onOpen() {
    this._setState(States.OPEN, {});
    this._clearStable();
    this._stableTimer = this._setTimeout(() => { this._stableTimer = null; this.attempt = 0; }, this.backoff.stable);
    // Resubscribe everything this client holds: live topics as live, replays
    // from where their clock had got to.
    for (const [topic, sub] of this._live) this._sendSubscribe(topic, sub);
    for (const r of this._replays.values()) {
      r._pauseAgain = r.state === "paused";
      this._sendReplaySubscribe(r);
    }
  }

  _onClose(code, reason) {
    this._ws = null;
    this._clearStable();
    this.lastClose = { code, reason };
    this._disconnected();
    if (code === CloseCodes.UNAUTHORIZED) {
      // The credential is missing or no longer valid: retrying cannot help
      // until the user logs in again and the app calls connect().
      this._want = false;
      this._setState(States.UNAUTHORIZED, { code, reason });
      return;
    }
    if (!this._want) {
      this._setState(States.CLOSED, { code, reason });
      return;
    }
    this._scheduleRetry(code === CloseCodes.TRY_AGAIN_LATER, code, reason);
  }

  _scheduleRetry(unavailable, code, reason) {
    const delay = backoffDelay(this.attempt, this.backoff, this._random, unavailable);
    const info = { code, reason, attempt: this.attempt, retryIn: delay };
    this.attempt++;
    this._setState(unavailable ? States.UNAVAILABLE : States.CONNECTING, info);
    this._retry = this._setTimeout(() => {
      this._retry = null;
      if (this._want && !this._ws) this._open();
    }, delay);
  }

  _clearRetry() { if (this._retry != null) { this._clearTimeout(this._retry); this._retry = null; } }
  _clearStable() { if (this._stableTimer != null) { this._clearTimeout(this._stableTimer); this._stableTimer = null; } }

  // Requests in flight die with the socket.
  _disconnected() {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const sub of this._live.values()) {
      sub.subscribed = false;
      if (sub.retry != null) { this._clearTimeout(sub.retry); sub.retry = null; }
    }
    for (const p of pending) {
      if (p.reject && p.kind !== "subscribe" && p.kind !== "replay_subscribe") {
        p.reject(clientError(ErrorCodes.DISCONNECTED, "connection closed before the answer", { topic: p.topic }));
      }
    }
  }

  _send(msg) {
    if (!this._ws || this.state !== States.OPEN) return false;
    this._ws.send(JSON.stringify(msg));
    return true;
  }

  _id(prefix) { return prefix + ++this._seq; }

  // ---- live subscriptions ----

  /**
   * subscribe follows an event live (topic "event:<uuid>" or the bare
   * uuid). Options max_hz and devices are passed to the server as given.
   * The subscription is kept, and renewed after every reconnect, until
   * unsubscribe(). Returns the topic.
   */
  subscribe(eventOrTopic, options = {}) {
    const topic = topicOf(eventOrTopic);
    let sub = this._live.get(topic);
    if (!sub) {
      sub = { options: {}, subscribed: false, latest: new Map(), retry: null, attempt: 0 };
      this._live.set(topic, sub);
    }
    sub.options = { ...options };
    if (this.state === States.OPEN && !sub.subscribed) this._sendSubscribe(topic, sub);
    return topic;
  }

  /** unsubscribe stops following a topic live and forgets its positions. */
  unsubscribe(eventOrTopic) {
    const topic = topicOf(eventOrTopic);
    const sub = this._live.get(topic);
    if (!sub) return;
    this._live.delete(topic);
    if (sub.retry != null) this._clearTimeout(sub.retry);
    this._send({ type: "unsubscribe", topic, id: this._id("u") });
  }

  /** topics lists the live subscriptions. */
  topics() { return [...this._live.keys()]; }

  /** latest returns the Map device_id -> latest live position of a topic. */
  latest(eventOrTopic) {
    const sub = this._live.get(topicOf(eventOrTopic));
    return sub ? sub.latest : new Map();
  }

  _sendSubscribe(topic, sub) {
    const id = this._id("s");
    this._pending.set(id, { kind: "subscribe", topic });
    this._send(subscribeFields({ type: "subscribe", topic, id }, sub.options));
  }

  // ---- replays ----

  /**
   * replay starts a replay of a topic: from (required), to (optional; omit
   * or "live" to rewind and then turn live), speed (number or "max"),
   * max_hz, devices. Returns a Replay; one replay per topic.
   */
  replay(eventOrTopic, options) {
    const topic = topicOf(eventOrTopic);
    if (!options || options.from == null) throw new TypeError("replay needs options.from");
    if (this._replays.has(topic)) throw new Error("a replay of " + topic + " is already running");
    const r = new Replay(this, topic, options);
    this._replays.set(topic, r);
    if (this.state === States.OPEN) this._sendReplaySubscribe(r);
    return r;
  }

  /** replays lists the running replays. */
  replays() { return [...this._replays.values()]; }

  _sendReplaySubscribe(r) {
    const o = r.options;
    const spec = { from: toISO(r._resumeFrom || o.from) };
    if (o.to != null) spec.to = o.to === "live" ? "live" : toISO(o.to);
    // A replay whose clock had reached its end restarts at the end.
    if (spec.to && spec.to !== "live" && Date.parse(spec.from) > Date.parse(spec.to)) spec.from = spec.to;
    if (o.speed != null) spec.speed = o.speed;
    const id = this._id("r");
    r.id = id;
    this._pending.set(id, { kind: "replay_subscribe", topic: r.topic, replay: r });
    this._send(subscribeFields({ type: "subscribe", topic: r.topic, id, replay: spec }, o));
  }

  _control(r, body) {
    // After turning live, a seek starts a new rewind of the same topic.
    const rewind = r.state === "live" && body.action === "seek" && this._live.has(r.topic) && !this._replays.has(r.topic);
    if (this._replays.get(r.topic) !== r && !rewind) {
      return Promise.reject(clientError(ErrorCodes.BAD_REQUEST, "no replay of this topic", { topic: r.topic, replay: true }));
    }
    return new Promise((resolve, reject) => {
      const id = this._id("c");
      this._pending.set(id, { kind: "control", topic: r.topic, replay: r, resolve, reject, body });
      if (!this._send({ type: "replay", topic: r.topic, id, ...body })) {
        this._pending.delete(id);
        reject(clientError(ErrorCodes.DISCONNECTED, "not connected", { topic: r.topic, replay: true }));
      }
    });
  }

  _stopReplay(r) {
    if (this._replays.get(r.topic) !== r) return Promise.resolve();
    this._replays.delete(r.topic);
    r.state = "stopped";
    return new Promise((resolve) => {
      const id = this._id("u");
      this._pending.set(id, { kind: "replay_unsubscribe", topic: r.topic, resolve, reject: resolve });
      if (!this._send({ type: "unsubscribe", topic: r.topic, id, replay: true })) {
        this._pending.delete(id);
        resolve();
      }
    });
  }

  _applyReplayStatus(r, f) {
    r.status = { from: f.from, to: f.to, speed: f.speed, state: f.state, at: f.at, wall: f.wall };
    if (f.state) r.state = f.state;
    if (f.speed != null) r.options.speed = f.speed;
    if (f.at) r._resumeFrom = f.at;
  }

  // ---- frames ----

  _onMessage(data) {
    let f;
    try { f = JSON.parse(data); } catch (e) { return; }
    if (!f || typeof f !== "object") return;
    const p = f.id != null ? this._pending.get(f.id) : undefined;
    if (p && f.type !== "positions" && f.type !== "replay_end") this._pending.delete(f.id);
    switch (f.type) {
      case "subscribed": return f.replay ? this._onReplaySubscribed(f) : this._onSubscribed(f);
      case "positions": return f.replay ? this._onReplayPositions(f) : this._onPositions(f);
      case "replay_state": return this._onReplayState(f, p);
      case "replay_end": return this._onReplayEnd(f);
      case "live": return this._onLive(f);
      case "unsubscribed":
        if (p && p.resolve) p.resolve(f);
        return;
      case "error": return this._onError(f, p);
    }
  }

  _onSubscribed(f) {
    const sub = this._live.get(f.topic);
    if (!sub) return; // unsubscribed meanwhile
    sub.subscribed = true;
    sub.attempt = 0;
    const taken = mergeLatest(sub.latest, f.snapshot);
    this.emit("snapshot", { topic: f.topic, replay: false, positions: taken, latest: sub.latest });
  }

  _onPositions(f) {
    const sub = this._live.get(f.topic);
    if (!sub) return;
    for (const p of mergeLatest(sub.latest, f.positions)) this.emit("position", p, { topic: f.topic, replay: false });
  }

  _onReplaySubscribed(f) {
    const r = this._replays.get(f.topic);
    if (!r) return;
    this._applyReplayStatus(r, f);
    // A first start shows the state at `from`; a restart after a reconnect
    // continues from the replay's clock, so it merges (never going back).
    const first = r.latest.size === 0;
    const taken = mergeLatest(r.latest, f.snapshot);
    const ev = { topic: f.topic, replay: true, positions: first ? [...r.latest.values()] : taken, latest: r.latest };
    r.emit("snapshot", ev);
    this.emit("snapshot", ev);
    if (r._pauseAgain) {
      r._pauseAgain = false;
      r.pause().catch(() => {});
    }
  }

  _onReplayPositions(f) {
    const r = this._replays.get(f.topic);
    if (!r) return;
    for (const p of mergeLatest(r.latest, f.positions)) {
      if (!r._resumeFrom || p.ts > r._resumeFrom) r._resumeFrom = p.ts;
      r.emit("position", p);
      this.emit("position", p, { topic: f.topic, replay: true });
    }
  }

  _onReplayState(f, p) {
    if (p && p.replay && p.replay.state === "live" && !this._replays.has(f.topic)) {
      // The seek after the switch to live: the topic is a replay again.
      this._live.delete(f.topic);
      this._replays.set(f.topic, p.replay);
    }
    const r = this._replays.get(f.topic);
    if (r) {
      this._applyReplayStatus(r, f);
      if (Array.isArray(f.snapshot)) {
        // A seek replaces the replay's picture: it may legitimately go back.
        r.latest.clear();
        mergeLatest(r.latest, f.snapshot);
        r._resumeFrom = f.at || r._resumeFrom;
        const ev = { topic: f.topic, replay: true, positions: [...r.latest.values()], latest: r.latest, seek: true };
        r.emit("snapshot", ev);
        this.emit("snapshot", ev);
      }
      r.emit("state", f);
    }
    this.emit("replay_state", f);
    if (p && p.resolve) p.resolve(f);
  }

  _onReplayEnd(f) {
    const r = this._replays.get(f.topic);
    if (r) {
      this._replays.delete(f.topic);
      r.state = "ended";
      r.emit("end", f);
    }
    this.emit("replay_end", { topic: f.topic, id: f.id });
  }

  // A replay whose `to` was omitted or "live" caught up with the present:
  // from now on the topic is a live subscription (renewed as live after a
  // reconnect) and its positions come in ordinary live frames.
  _onLive(f) {
    const r = this._replays.get(f.topic);
    let sub = this._live.get(f.topic);
    if (!sub) {
      sub = { options: {}, subscribed: true, latest: new Map(), retry: null, attempt: 0 };
      this._live.set(f.topic, sub);
    }
    sub.subscribed = true;
    if (r) {
      if (r.options.max_hz != null) sub.options.max_hz = r.options.max_hz;
      if (r.options.devices != null) sub.options.devices = [...r.options.devices];
      mergeLatest(sub.latest, [...r.latest.values()]);
      this._replays.delete(f.topic);
      r.state = "live";
      r.emit("live", f);
    }
    this.emit("live", { topic: f.topic, id: f.id });
  }

  _onError(f, p) {
    const err = clientError(f.code, f.message || f.code, { topic: f.topic, id: f.id, replay: !!f.replay, frame: f });
    if (p) {
      if (p.kind === "subscribe") this._subscribeFailed(p.topic, f.code);
      if (p.kind === "replay_subscribe") this._replayFailed(p.replay, f.code);
      if (p.reject) p.reject(err);
    } else if (f.id == null && f.topic && !f.replay && (f.code === ErrorCodes.FORBIDDEN || f.code === ErrorCodes.NOT_FOUND)) {
      // Re-authorization ended a live subscription: do not renew it.
      this._live.delete(f.topic);
    }
    this.emit("error", err);
  }

  _subscribeFailed(topic, code) {
    const sub = this._live.get(topic);
    if (!sub) return;
    if (code === ErrorCodes.UNAVAILABLE) {
      // Nothing was subscribed; the server asks to try again.
      const delay = backoffDelay(sub.attempt++, this.backoff, this._random);
      sub.retry = this._setTimeout(() => {
        sub.retry = null;
        if (this._live.get(topic) === sub && !sub.subscribed && this.state === States.OPEN) this._sendSubscribe(topic, sub);
      }, delay);
      return;
    }
    if (code === ErrorCodes.BAD_REQUEST && sub.subscribed) return; // already subscribed: keep it
    this._live.delete(topic);
  }

  _replayFailed(r, code) {
    if (this._replays.get(r.topic) !== r) return;
    this._replays.delete(r.topic);
    r.state = "stopped";
    r.emit("error", code);
  }
}

export default LiveClient;
