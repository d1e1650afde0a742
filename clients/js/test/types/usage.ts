// Compiled by `tsc -p test/types` (test/types.test.js): the declarations
// type a real use of the package, through its "exports" map.
import LiveClient, { LiveClient as Named, type Position, type State, VERSION, backoffDelay, CloseCodes } from "@trm-live/client";

const client: Named = new LiveClient({ backoff: { initial: 250, max: 10000 } });
const latest = new Map<string, Position>();
client.on("state", (state: State, info) => {
  if (state === "unauthorized") console.log("log in again", info.code);
  if (info.retryIn !== undefined) console.log("retry in", info.retryIn.toFixed(0));
});
client.on("position", (p, meta) => { if (!meta.replay) latest.set(p.device_id, p); });
client.on("snapshot", (s) => { for (const [id, p] of s.latest) latest.set(id, p); });
client.on("error", (e) => console.log(e.code, e.topic, e.message));
client.on("live", (l) => console.log("live again", l.topic));
client.on("replay_end", (e) => console.log("replay over", e.topic));
const topic: string = client.subscribe("7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a", { max_hz: 1, devices: ["dev-1"] });
client.connect();
const r = client.replay(topic, { from: new Date(Date.now() - 60000), to: "live", speed: 4 });
r.on("end", () => client.close());
void r.pause().then((st) => st.state === "paused");
void r.seek("2026-05-03T10:00:00Z");
void r.speed("max");
const d: number = backoffDelay(3, { initial: 100 }, Math.random, false);
const v: string = VERSION;
const code: 4401 = CloseCodes.UNAUTHORIZED;
console.log(d, v, code, client.state, client.latest(topic).size);
// @ts-expect-error: speed must be a number or "max"
void r.speed("fast");
// @ts-expect-error: from is required
client.replay(topic, { to: "live" });
