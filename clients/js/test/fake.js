// A scripted fake WebSocket and fake timers for the client's tests: the
// test plays the server (open, frames, close) and moves time by hand.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const golden = new URL("../../../contract/testdata/ws/", import.meta.url);

/** frame reads a golden frame of contract/testdata/ws, with overrides. */
export function frame(name, over = {}) {
  return { ...JSON.parse(readFileSync(fileURLToPath(new URL(name + ".json", golden)), "utf8")), ...over };
}

export class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeWebSocket.instances.push(this);
  }
  static reset() { FakeWebSocket.instances = []; }
  static get last() { return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]; }
  send(data) {
    if (this.closed) throw new Error("send on a closed socket");
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) { this.closed = { code, reason }; }
  // ---- the server's side ----
  open() { this.onopen && this.onopen({}); }
  frame(obj) { this.onmessage && this.onmessage({ data: JSON.stringify(obj) }); }
  drop(code = 1006, reason = "") { this.closed = { code, reason }; this.onclose && this.onclose({ code, reason }); }
  /** lastSent returns the last message the client sent (or of a type). */
  lastSent(type) {
    const l = type ? this.sent.filter((m) => m.type === type) : this.sent;
    return l[l.length - 1];
  }
}

export class FakeTimers {
  constructor() { this.now = 0; this.seq = 0; this.timers = new Map(); }
  setTimeout = (fn, ms) => { const h = ++this.seq; this.timers.set(h, { at: this.now + ms, fn, ms }); return h; };
  clearTimeout = (h) => { this.timers.delete(h); };
  /** pending lists the delays of the timers not yet fired. */
  pending() { return [...this.timers.values()].map((t) => t.ms); }
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null, nh = null;
      for (const [h, t] of this.timers) if (t.at <= end && (!next || t.at < next.at)) { next = t; nh = h; }
      if (!next) break;
      this.timers.delete(nh);
      this.now = next.at;
      next.fn();
    }
    this.now = end;
  }
}
