// The client's pure logic against a scripted fake WebSocket: backoff,
// merge by ts, the state machine, resubscribe, replay and rewind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LiveClient, backoffDelay, mergeLatest, DEFAULT_BACKOFF, topicOf } from "../index.js";
import { FakeWebSocket, FakeTimers, frame } from "./fake.js";

const EV = "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a";
const TOPIC = "event:" + EV;
const pos = (device_id, ts) => ({ device_id, event_id: EV, ts, lat: 1, lon: 2 });

function setup(over = {}) {
  FakeWebSocket.reset();
  const timers = new FakeTimers();
  const c = new LiveClient({
    url: "ws://origin.test/ws-live", WebSocket: FakeWebSocket, random: () => 1,
    setTimeout: timers.setTimeout, clearTimeout: timers.clearTimeout, ...over,
  });
  const log = { states: [], positions: [], snapshots: [], errors: [], live: [], ends: [] };
  c.on("state", (s, info) => log.states.push([s, info]));
  c.on("position", (p, m) => log.positions.push([p, m]));
  c.on("snapshot", (s) => log.snapshots.push(s));
  c.on("error", (e) => log.errors.push(e));
  c.on("live", (l) => log.live.push(l));
  c.on("replay_end", (e) => log.ends.push(e));
  return { c, timers, log };
}

// open connects the client and opens its socket, returning it.
function open(c) {
  c.connect();
  const ws = FakeWebSocket.last;
  ws.open();
  return ws;
}

test("backoff: full jitter, exponential, capped", () => {
  const o = { ...DEFAULT_BACKOFF, initial: 500, max: 8000 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 10].map((a) => backoffDelay(a, o, () => 1)), [500, 1000, 2000, 4000, 8000, 8000, 8000]);
  assert.equal(backoffDelay(3, o, () => 0), 0, "full jitter goes down to zero");
  assert.equal(backoffDelay(3, o, () => 0.25), 1000);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12, o);
    assert.ok(d >= 0 && d <= 8000, `delay ${d} out of [0, cap]`);
  }
});

test("backoff after 1013 is longer: at least unavailableInitial, at most unavailableMax", () => {
  const o = { ...DEFAULT_BACKOFF, initial: 500, unavailableInitial: 5000, unavailableMax: 60000 };
  assert.equal(backoffDelay(0, o, () => 0, true), 5000);
  assert.equal(backoffDelay(0, o, () => 1, true), 5500);
  assert.equal(backoffDelay(20, o, () => 1, true), 60000);
  assert.ok(backoffDelay(0, o, () => 0, true) > backoffDelay(0, o, () => 1, false));
});

test("mergeLatest keeps the newest ts per device and never goes back", () => {
  const m = new Map();
  assert.deepEqual(mergeLatest(m, [pos("a", "2026-05-03T10:00:01.000Z"), pos("b", "2026-05-03T10:00:01.000Z")]).length, 2);
  const taken = mergeLatest(m, [
    pos("a", "2026-05-03T10:00:00.999Z"), // older: dropped
    pos("b", "2026-05-03T10:00:01.000Z"), // equal: dropped
    pos("a", "2026-05-03T10:00:02.000Z"), // newer: taken
    pos("c", "2026-05-03T09:00:00.000Z"), // new device: taken
  ]);
  assert.deepEqual(taken.map((p) => p.device_id), ["a", "c"]);
  assert.equal(m.get("a").ts, "2026-05-03T10:00:02.000Z");
  assert.equal(m.get("b").ts, "2026-05-03T10:00:01.000Z");
  // Fractional seconds of other lengths compare by time, not by text.
  mergeLatest(m, [pos("a", "2026-05-03T10:00:02.5Z")]);
  assert.equal(m.get("a").ts, "2026-05-03T10:00:02.5Z");
  mergeLatest(m, [pos("a", "2026-05-03T10:00:02.100Z")]);
  assert.equal(m.get("a").ts, "2026-05-03T10:00:02.5Z");
});

test("topicOf takes an event id or a topic", () => {
  assert.equal(topicOf(EV), TOPIC);
  assert.equal(topicOf(TOPIC), TOPIC);
});

test("connect, subscribe as the contract's golden frame, snapshot and live positions", () => {
  const { c, log } = setup();
  c.subscribe(EV); // before the socket is open: sent on open
  c.connect();
  const ws = FakeWebSocket.last;
  assert.equal(ws.url, "ws://origin.test/ws-live");
  assert.equal(c.state, "connecting");
  assert.equal(ws.sent.length, 0);
  ws.open();
  assert.equal(c.state, "open");
  const sub = ws.lastSent("subscribe");
  assert.deepEqual(sub, frame("subscribe", { id: sub.id }));
  ws.frame(frame("subscribed", { id: sub.id }));
  assert.equal(log.snapshots.length, 1);
  assert.equal(log.snapshots[0].positions.length, 2);
  assert.equal(c.latest(EV).size, 2);
  ws.frame(frame("positions", { positions: [pos("dev-1", "2026-05-03T10:00:01.000Z"), pos("dev-1", "2026-05-03T10:00:00.500Z")] }));
  assert.equal(log.positions.length, 1, "the older of the two is not emitted");
  assert.deepEqual(log.positions[0][1], { topic: TOPIC, replay: false });
  assert.equal(c.latest(TOPIC).get("dev-1").ts, "2026-05-03T10:00:01.000Z");
  assert.deepEqual(log.states.map((s) => s[0]), ["connecting", "open"]);
});

test("max_hz and devices are passed through on subscribe", () => {
  const { c } = setup();
  const ws = open(c);
  c.subscribe(EV, { max_hz: 1, devices: ["dev-1", "dev-2"] });
  const m = ws.lastSent("subscribe");
  assert.equal(m.max_hz, 1);
  assert.deepEqual(m.devices, ["dev-1", "dev-2"]);
});

test("reconnect: backoff, resubscribe with the same options, merge by ts", () => {
  const { c, timers, log } = setup();
  const ws1 = open(c);
  c.subscribe(EV, { max_hz: 2 });
  ws1.frame({ type: "subscribed", topic: TOPIC, id: ws1.lastSent("subscribe").id,
    snapshot: [pos("a", "2026-05-03T10:00:05.000Z"), pos("b", "2026-05-03T10:00:05.000Z")] });
  ws1.frame({ type: "positions", topic: TOPIC, positions: [pos("a", "2026-05-03T10:00:09.000Z")] });

  ws1.drop(1006);
  assert.equal(c.state, "connecting");
  assert.deepEqual(log.states.at(-1)[1], { code: 1006, reason: "", attempt: 0, retryIn: 500 });
  assert.deepEqual(timers.pending(), [500]);
  timers.advance(499);
  assert.equal(FakeWebSocket.instances.length, 1, "no dial before the delay");
  timers.advance(1);
  assert.equal(FakeWebSocket.instances.length, 2);
  const ws2 = FakeWebSocket.last;
  ws2.open();
  const sub = ws2.lastSent("subscribe");
  assert.equal(sub.topic, TOPIC);
  assert.equal(sub.max_hz, 2);
  assert.equal(sub.replay, undefined);
  // The new snapshot: a is older than what we hold (a position the server
  // stored before the one we saw live), b newer, c new.
  const before = log.positions.length;
  ws2.frame({ type: "subscribed", topic: TOPIC, id: sub.id, snapshot: [
    pos("a", "2026-05-03T10:00:07.000Z"), pos("b", "2026-05-03T10:00:08.000Z"), pos("c", "2026-05-03T10:00:01.000Z")] });
  const snap = log.snapshots.at(-1);
  assert.deepEqual(snap.positions.map((p) => p.device_id), ["b", "c"]);
  assert.equal(c.latest(EV).get("a").ts, "2026-05-03T10:00:09.000Z", "a did not go back in time");
  assert.equal(c.latest(EV).get("b").ts, "2026-05-03T10:00:08.000Z");
  assert.equal(log.positions.length, before);
});

test("backoff grows while connects fail and resets after a stable period only", () => {
  const { c, timers, log } = setup({ backoff: { initial: 100, max: 1000, stable: 5000 } });
  c.connect();
  const delays = [];
  for (let i = 0; i < 6; i++) {
    FakeWebSocket.last.drop(1006); // refused before open
    delays.push(log.states.at(-1)[1].retryIn);
    timers.advance(delays.at(-1));
  }
  assert.deepEqual(delays, [100, 200, 400, 800, 1000, 1000]);
  // Open, then dropped before the stable period: no reset.
  FakeWebSocket.last.open();
  timers.advance(4999);
  FakeWebSocket.last.drop(1006);
  assert.equal(log.states.at(-1)[1].retryIn, 1000);
  timers.advance(1000);
  // Open and stable: the next drop starts from the first delay again.
  FakeWebSocket.last.open();
  timers.advance(5000);
  assert.equal(c.attempt, 0);
  FakeWebSocket.last.drop(1001, "going away");
  assert.equal(log.states.at(-1)[1].retryIn, 100);
});

test("4401: state unauthorized, no reconnect at all, until connect() after a login", () => {
  const { c, timers, log } = setup();
  const ws = open(c);
  c.subscribe(EV);
  ws.drop(4401, "unauthorized");
  assert.equal(c.state, "unauthorized");
  assert.deepEqual(log.states.at(-1), ["unauthorized", { code: 4401, reason: "unauthorized" }]);
  assert.deepEqual(timers.pending(), [], "no retry scheduled");
  timers.advance(10 * 60 * 1000);
  assert.equal(FakeWebSocket.instances.length, 1, "not one more handshake");
  // The app logs the user in again and calls connect(): subscriptions return.
  c.connect();
  assert.equal(FakeWebSocket.instances.length, 2);
  FakeWebSocket.last.open();
  assert.equal(FakeWebSocket.last.lastSent("subscribe").topic, TOPIC);
});

test("1013: state unavailable and a longer wait", () => {
  const { c, timers, log } = setup({ backoff: { initial: 500, unavailableInitial: 5000, unavailableMax: 60000 }, random: () => 0 });
  const ws = open(c);
  ws.drop(1013, "authentication unavailable, try again later");
  assert.equal(c.state, "unavailable");
  assert.equal(log.states.at(-1)[1].retryIn, 5000);
  timers.advance(4999);
  assert.equal(FakeWebSocket.instances.length, 1);
  timers.advance(1);
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(c.state, "connecting");
  FakeWebSocket.last.drop(1013);
  assert.equal(c.state, "unavailable", "a second 1013 is reported again");
});

test("close(): state closed, no reconnect", () => {
  const { c, timers } = setup();
  const ws = open(c);
  c.close();
  assert.equal(c.state, "closed");
  assert.deepEqual(ws.closed, { code: 1000, reason: "client closed" });
  timers.advance(60000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("error frames: emitted with the protocol's codes; refused topics are not renewed", () => {
  const { c, timers, log } = setup();
  const ws = open(c);
  c.subscribe(EV);
  const id = ws.lastSent("subscribe").id;
  ws.frame(frame("error_forbidden", { id }));
  assert.equal(log.errors.at(-1).code, "forbidden");
  assert.equal(log.errors.at(-1).topic, TOPIC);
  assert.deepEqual(c.topics(), []);
  ws.drop(1006);
  timers.advance(500);
  FakeWebSocket.last.open();
  assert.equal(FakeWebSocket.last.lastSent("subscribe"), undefined, "forbidden topic not resubscribed");
});

test("error unavailable on subscribe: retried after a backoff", () => {
  const { c, timers, log } = setup();
  const ws = open(c);
  c.subscribe(EV);
  ws.frame(frame("error_unavailable", { id: ws.lastSent("subscribe").id }));
  assert.equal(log.errors.at(-1).code, "unavailable");
  assert.equal(ws.sent.length, 1);
  timers.advance(500);
  assert.equal(ws.sent.length, 2);
  assert.equal(ws.lastSent("subscribe").topic, TOPIC);
});

test("re-authorization's forbidden (no id) ends the subscription for good", () => {
  const { c, log } = setup();
  const ws = open(c);
  c.subscribe(EV);
  ws.frame(frame("subscribed", { id: ws.lastSent("subscribe").id }));
  ws.frame(frame("error_forbidden_reauth"));
  assert.equal(log.errors.at(-1).code, "forbidden");
  assert.deepEqual(c.topics(), []);
});

test("replay: subscribe, positions, pause/resume/seek/speed, replay_end", async () => {
  const { c, log } = setup();
  const ws = open(c);
  const r = c.replay(EV, { from: "2026-05-03T10:00:00.000Z", to: "2026-05-03T12:00:00.000Z", speed: 60 });
  const sub = ws.lastSent("subscribe");
  assert.deepEqual(sub, frame("replay_subscribe", { id: sub.id }));
  ws.frame(frame("replay_subscribed", { id: sub.id }));
  assert.equal(r.state, "playing");
  assert.equal(log.snapshots.at(-1).replay, true);
  assert.equal(r.latest.size, 2);
  ws.frame(frame("replay_positions"));
  assert.ok(log.positions.length >= 0);
  ws.frame({ type: "positions", topic: TOPIC, replay: true, positions: [pos("dev-1", "2026-05-03T10:30:00.000Z")] });
  assert.deepEqual(log.positions.at(-1)[1], { topic: TOPIC, replay: true });
  assert.equal(c.latest(EV).size, 0, "replay positions are not live positions");

  const paused = r.pause();
  const ctl = ws.lastSent("replay");
  assert.deepEqual(ctl, frame("replay_pause", { id: ctl.id }));
  ws.frame(frame("replay_state_paused", { id: ctl.id }));
  assert.equal((await paused).state, "paused");
  assert.equal(r.state, "paused");

  const resumed = r.resume();
  const ctl2 = ws.lastSent("replay");
  assert.equal(ctl2.action, "resume");
  ws.frame({ ...frame("replay_state_paused"), id: ctl2.id, action: "resume", state: "playing" });
  await resumed;

  const sp = r.speed("max");
  const ctl3 = ws.lastSent("replay");
  assert.deepEqual(ctl3, { type: "replay", topic: TOPIC, id: ctl3.id, action: "speed", speed: "max" });
  ws.frame({ ...frame("replay_state_paused"), id: ctl3.id, action: "speed", speed: "max", state: "playing" });
  await sp;

  // A seek back replaces the replay's picture, even with older positions.
  const sk = r.seek(new Date("2026-05-03T11:00:00Z"));
  const ctl4 = ws.lastSent("replay");
  assert.equal(ctl4.to, "2026-05-03T11:00:00.000Z");
  ws.frame(frame("replay_state_seek", { id: ctl4.id }));
  await sk;
  assert.equal(r.latest.size, 1);
  assert.equal(log.snapshots.at(-1).seek, true);

  const ended = new Promise((res) => r.on("end", res));
  ws.frame(frame("replay_end", { id: sub.id }));
  await ended;
  assert.equal(r.state, "ended");
  assert.deepEqual(log.ends, [{ topic: TOPIC, id: sub.id }]);
  await assert.rejects(r.pause(), { code: "bad_request" });
});

test("replay: a control error rejects with the protocol's code", async () => {
  const { c } = setup();
  const ws = open(c);
  const r = c.replay(EV, { from: "2026-05-03T10:00:00Z" });
  const p = r.seek("2020-01-01T00:00:00Z");
  ws.frame({ type: "error", code: "bad_request", topic: TOPIC, id: ws.lastSent("replay").id, replay: true, message: "seek outside" });
  await assert.rejects(p, { code: "bad_request", message: "seek outside" });
});

test("replay after a reconnect resumes from its clock, paused again, never going back", async () => {
  const { c, timers } = setup();
  const ws = open(c);
  const r = c.replay(EV, { from: "2026-05-03T10:00:00.000Z", to: "2026-05-03T12:00:00.000Z", speed: 60 });
  ws.frame(frame("replay_subscribed", { id: ws.lastSent("subscribe").id }));
  ws.frame({ type: "positions", topic: TOPIC, replay: true, positions: [pos("dev-1", "2026-05-03T10:40:00.000Z")] });
  const paused = r.pause();
  ws.frame({ ...frame("replay_state_paused"), id: ws.lastSent("replay").id, at: "2026-05-03T10:41:00.000Z" });
  await paused;
  ws.drop(1006);
  timers.advance(500);
  const ws2 = FakeWebSocket.last;
  ws2.open();
  const sub = ws2.lastSent("subscribe");
  // The speed is the server's last word (the golden paused frame says "max").
  assert.deepEqual(sub.replay, { from: "2026-05-03T10:41:00.000Z", to: "2026-05-03T12:00:00.000Z", speed: "max" });
  ws2.frame({ ...frame("replay_subscribed"), id: sub.id, from: sub.replay.from, at: sub.replay.from,
    snapshot: [pos("dev-1", "2026-05-03T10:39:00.000Z")] });
  assert.equal(r.latest.get("dev-1").ts, "2026-05-03T10:40:00.000Z");
  assert.equal(ws2.lastSent("replay").action, "pause", "paused again");
});

test("rewind: to \"live\" passed through; the live frame turns the topic live, renewed as live", () => {
  const { c, timers, log } = setup();
  const ws = open(c);
  const r = c.replay(EV, { from: "2026-05-03T10:00:00.000Z", to: "live", speed: 4, max_hz: 1, devices: ["dev-1"] });
  const sub = ws.lastSent("subscribe");
  assert.deepEqual(sub.replay, { from: "2026-05-03T10:00:00.000Z", to: "live", speed: 4 });
  assert.equal(sub.max_hz, 1);
  assert.deepEqual(sub.devices, ["dev-1"]);
  ws.frame({ ...frame("replay_subscribed"), id: sub.id, to: undefined });
  ws.frame({ type: "positions", topic: TOPIC, replay: true, positions: [pos("dev-1", "2026-05-03T10:00:30.000Z")] });
  const lives = [];
  r.on("live", (f) => lives.push(f));
  ws.frame({ type: "live", topic: TOPIC, id: sub.id });
  assert.deepEqual(log.live, [{ topic: TOPIC, id: sub.id }]);
  assert.equal(lives.length, 1);
  assert.equal(r.state, "live");
  assert.deepEqual(c.topics(), [TOPIC]);
  assert.equal(c.replays().length, 0);
  assert.equal(c.latest(EV).get("dev-1").ts, "2026-05-03T10:00:30.000Z", "the rewind's picture carries over");
  ws.frame({ type: "positions", topic: TOPIC, positions: [pos("dev-1", "2026-05-03T10:00:31.000Z"), pos("dev-1", "2026-05-03T10:00:29.000Z")] });
  assert.deepEqual(log.positions.at(-1)[1], { topic: TOPIC, replay: false });
  assert.equal(c.latest(EV).get("dev-1").ts, "2026-05-03T10:00:31.000Z");
  // After a reconnect the topic is subscribed live, with the rewind's filters.
  ws.drop(1006);
  timers.advance(500);
  FakeWebSocket.last.open();
  const again = FakeWebSocket.last.lastSent("subscribe");
  assert.equal(again.replay, undefined);
  assert.equal(again.max_hz, 1);
  assert.deepEqual(again.devices, ["dev-1"]);
});

test("rewind: a seek after the switch starts a new rewind of the topic", async () => {
  const { c } = setup();
  const ws = open(c);
  const r = c.replay(EV, { from: "2026-05-03T10:00:00.000Z", to: "live" });
  const sub = ws.lastSent("subscribe");
  ws.frame({ ...frame("replay_subscribed"), id: sub.id, to: undefined });
  ws.frame({ type: "live", topic: TOPIC, id: sub.id });
  const sk = r.seek("2026-05-03T10:00:00.000Z");
  const ctl = ws.lastSent("replay");
  ws.frame({ ...frame("replay_state_seek"), id: ctl.id, to: undefined, at: "2026-05-03T10:00:00.000Z" });
  await sk;
  assert.deepEqual(c.topics(), []);
  assert.deepEqual(c.replays(), [r]);
});

test("frames of an unsubscribed topic are ignored; unsubscribe is sent", () => {
  const { c, log } = setup();
  const ws = open(c);
  c.subscribe(EV);
  ws.frame(frame("subscribed", { id: ws.lastSent("subscribe").id }));
  c.unsubscribe(EV);
  assert.deepEqual(ws.lastSent("unsubscribe"), { type: "unsubscribe", topic: TOPIC, id: ws.lastSent("unsubscribe").id });
  const n = log.positions.length;
  ws.frame(frame("positions"));
  assert.equal(log.positions.length, n);
});

test("replay after a reconnect: a clock past `to` restarts at `to`, not after it", () => {
  const { c, timers } = setup();
  const ws = open(c);
  c.replay(EV, { from: "2026-05-03T10:00:00.000Z", to: "2026-05-03T10:01:00.000Z", speed: 60 });
  ws.frame({ ...frame("replay_subscribed"), id: ws.lastSent("subscribe").id, to: "2026-05-03T10:01:00.000Z" });
  ws.frame({ type: "positions", topic: TOPIC, replay: true, positions: [pos("dev-1", "2026-05-03T10:01:00.500Z")] });
  ws.drop(1006);
  timers.advance(500);
  FakeWebSocket.last.open();
  assert.deepEqual(FakeWebSocket.last.lastSent("subscribe").replay,
    { from: "2026-05-03T10:01:00.000Z", to: "2026-05-03T10:01:00.000Z", speed: 60 });
});
