// trm-live dev viewer. Talks to its own origin only, as the production SPA:
// Directus session login (httpOnly cookie), /items/events, then /ws-live
// through @trm-live/client (clients/js; trm-live-client.js is its copy, made
// by `go generate` in scripts/viewer). No framework, no build step.
import { LiveClient } from "./trm-live-client.js";

(function () {
  const TRAIL = 24;            // positions kept per device for the trail
  const RATE_WINDOW_MS = 5000; // positions/s is averaged over this window

  const $ = (id) => document.getElementById(id);
  const state = {
    user: null,         // {id,email}
    eventId: "",        // followed event
    topic: "",
    // The connection, its backoff and resubscription are the library's.
    client: new LiveClient({ backoff: { initial: 500, max: 15000 } }),
    conn: "idle",       // idle, or the client's state: connecting | open | closed | unauthorized | unavailable
    following: false,   // false while logged out: the client's states are not shown
    devices: new Map(), // device_id -> {trail:[{lat,lon,ts}], last: position, color}
    received: 0,        // positions received since the page loaded
    arrivals: [],       // [ms, n] for the rate
    lastClose: null,    // {code, reason}
    bounds: null,       // {minLat,maxLat,minLon,maxLon}
    dirty: true,
    follow: [],         // subscription option devices: [] = every device
    maxHz: 0,           // subscription option max_hz: 0 = no cap
  };

  // ---- state for tests (read by the e2e test through CDP) ----
  window.trmViewer = {
    stats() {
      return {
        connection: state.conn, user: state.user ? state.user.email : null, topic: state.topic,
        devices: state.devices.size, positions: state.received, rate: rate(), lastClose: state.lastClose,
        follow: state.follow.slice(), maxHz: state.maxHz,
      };
    },
  };

  function setConn(s) {
    state.conn = s;
    const el = $("conn");
    el.dataset.state = s;
    el.textContent = s;
  }
  function message(text) { $("message").textContent = text || ""; }

  // ---- HTTP (same origin, cookie sent by the browser) ----
  async function api(method, path, body) {
    const res = await fetch(path, {
      method, credentials: "same-origin",
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const msg = data && data.errors && data.errors[0] ? data.errors[0].message : res.status + " " + res.statusText;
      const err = new Error(msg);
      err.status = res.status;
      throw err;
    }
    return data ? data.data : null;
  }

  async function whoAmI() {
    try { return await api("GET", "/users/me?fields=id,email"); } catch (e) { return null; }
  }

  function showLogin(reason) {
    stopSocket();
    state.user = null;
    $("live-view").hidden = true;
    $("login-view").hidden = false;
    $("logout").hidden = true;
    $("who").textContent = "";
    $("login-error").textContent = reason || "";
  }

  async function showLive(user) {
    state.user = user;
    $("login-view").hidden = true;
    $("live-view").hidden = false;
    $("logout").hidden = false;
    $("who").textContent = user.email || user.id;
    let events = [];
    try {
      events = await api("GET", "/items/events?fields=id,name&sort=name&limit=-1") || [];
    } catch (e) {
      message("cannot list events: " + e.message);
    }
    const sel = $("event");
    sel.textContent = "";
    for (const ev of events) {
      const o = document.createElement("option");
      o.value = ev.id;
      o.textContent = ev.name ? ev.name + " (" + ev.id.slice(0, 8) + ")" : ev.id;
      sel.appendChild(o);
    }
    const wanted = new URLSearchParams(location.search).get("event");
    if (wanted && !events.some((e) => e.id === wanted)) {
      const o = document.createElement("option");
      o.value = wanted; o.textContent = wanted;
      sel.appendChild(o);
    }
    if (wanted) sel.value = wanted;
    if (sel.value) follow(sel.value);
    else message("no event to follow");
  }

  // ---- /ws-live through @trm-live/client ----
  const client = state.client;
  client.on("state", (st, info) => {
    if (!state.following) return;
    setConn(st);
    if (info.code != null) state.lastClose = { code: info.code, reason: info.reason || "" };
    if (st === "open") message("");
    else if (st === "unauthorized") {
      // The session is gone (expired, logged out elsewhere): log in again.
      // The client does not retry by itself.
      showLogin("Your session has ended; log in again.");
    } else if (info.retryIn != null) {
      message("connection closed (" + info.code + (info.reason ? " " + info.reason : "") + "); retrying in " + (info.retryIn / 1000).toFixed(1) + " s");
    }
  });
  client.on("snapshot", (ev) => {
    if (ev.replay || ev.topic !== state.topic) return;
    // The whole picture the client holds for the topic, so a page that
    // cleared its own (a new follow, a login again) is complete at once.
    for (const p of ev.latest.values()) addPosition(p, false);
  });
  client.on("position", (p, meta) => {
    if (!meta.replay && meta.topic === state.topic) addPosition(p, true);
  });
  client.on("error", (e) => message(e.code + ": " + e.message));

  function follow(eventId) {
    stopRewind();
    state.eventId = eventId;
    state.topic = "event:" + eventId;
    $("topic").textContent = state.topic;
    state.devices.clear();
    state.bounds = null;
    state.dirty = true;
    // One event at a time: stop following whatever else this page followed.
    for (const t of client.topics()) if (t !== state.topic) client.unsubscribe(t);
    client.subscribe(state.topic, subOptions());
    state.following = true;
    client.connect();
  }

  // "Follow these cars": the subscription options devices and max_hz.
  function subOptions() {
    const o = {};
    if (state.follow.length) o.devices = state.follow;
    if (state.maxHz > 0) o.max_hz = state.maxHz;
    return o;
  }
  // The server keeps a subscription's options for its life, so a change is
  // an unsubscribe and a new subscribe (a fresh snapshot of those devices).
  $("follow-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.follow = [...new Set($("follow-devices").value.split(/[\s,]+/).filter(Boolean))];
    const hz = parseFloat($("follow-hz").value);
    state.maxHz = hz > 0 ? hz : 0;
    message("");
    if (!state.topic) return;
    state.devices.clear();
    state.bounds = null;
    state.dirty = true;
    client.unsubscribe(state.topic);
    client.subscribe(state.topic, subOptions());
  });

  // "Rewind 1 min": a replay of the last minute at 4× with no end (to
  // "live"), which the server turns into the live subscription once it
  // reaches the present. The live subscription ends first (the server runs
  // one of the two per topic); the picture restarts from the rewind's
  // snapshot.
  const REWIND_MS = 60_000, REWIND_SPEED = 4;
  $("rewind").addEventListener("click", () => {
    if (!state.topic || state.rewind) return;
    const topic = state.topic;
    client.unsubscribe(topic);
    state.devices.clear();
    state.bounds = null;
    state.dirty = true;
    const r = client.replay(topic, { from: new Date(Date.now() - REWIND_MS), to: "live", speed: REWIND_SPEED, ...subOptions() });
    state.rewind = r;
    $("rewind").disabled = true;
    message("rewinding the last minute at " + REWIND_SPEED + "×");
    const done = (text) => {
      if (state.rewind !== r) return;
      state.rewind = null;
      $("rewind").disabled = false;
      message(text);
    };
    r.on("snapshot", (ev) => { for (const p of ev.positions) addPosition(p, false); });
    r.on("position", (p) => { if (topic === state.topic) addPosition(p, true); });
    r.on("live", () => done(""));
    r.on("end", () => done("rewind ended"));
    r.on("error", (e) => done("rewind: " + e.code + ": " + e.message));
  });

  // A rewind still running when the page follows another event or logs out
  // is stopped (after its switch it is the live subscription, which the
  // callers unsubscribe).
  function stopRewind() {
    const r = state.rewind;
    if (!r) return;
    state.rewind = null;
    $("rewind").disabled = false;
    if (r.state !== "live") r.stop();
  }

  function stopSocket() {
    stopRewind();
    state.following = false;
    // Logged out: forget the subscriptions and what they held, so the next
    // user starts from their own snapshot.
    for (const t of client.topics()) client.unsubscribe(t);
    client.close();
  }

  function addPosition(p, live) {
    // Positions of the previous subscription may still arrive before its
    // unsubscribed frame.
    if (state.follow.length && !state.follow.includes(p.device_id)) return;
    let d = state.devices.get(p.device_id);
    if (!d) {
      d = { trail: [], last: null, color: colorOf(p.device_id) };
      state.devices.set(p.device_id, d);
    }
    // Drop stale items (a snapshot after a reconnect may be older than what
    // we hold).
    if (d.last && Date.parse(p.ts) <= Date.parse(d.last.ts)) return;
    d.last = p;
    d.seen = Date.now();
    d.trail.push([p.lat, p.lon]);
    if (d.trail.length > TRAIL) d.trail.shift();
    grow(p.lat, p.lon);
    if (live) {
      state.received++;
      state.arrivals.push([Date.now(), 1]);
    }
    state.dirty = true;
  }

  function rate() {
    const now = Date.now();
    while (state.arrivals.length && state.arrivals[0][0] < now - RATE_WINDOW_MS) state.arrivals.shift();
    return state.arrivals.length / (RATE_WINDOW_MS / 1000);
  }

  // ---- drawing ----
  function grow(lat, lon) {
    const b = state.bounds;
    if (!b) { state.bounds = { minLat: lat, maxLat: lat, minLon: lon, maxLon: lon }; return; }
    b.minLat = Math.min(b.minLat, lat); b.maxLat = Math.max(b.maxLat, lat);
    b.minLon = Math.min(b.minLon, lon); b.maxLon = Math.max(b.maxLon, lon);
  }

  function colorOf(id) {
    // FNV-1a, then golden-angle spacing, so ids that differ in one
    // character still get far-apart hues.
    let h = 2166136261;
    for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 16777619) >>> 0;
    return "hsl(" + Math.round((h % 1000) * 137.508) % 360 + ",70%,42%)";
  }

  function draw() {
    const c = $("map");
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    const b = state.bounds;
    if (!b) {
      ctx.fillStyle = "#8a96a1";
      ctx.fillText(state.topic ? "waiting for positions…" : "", 20, 30);
      return;
    }
    // Equirectangular projection scaled to the bounding box of every fix
    // seen, with a margin; one degree of longitude is cos(lat) of latitude's.
    const pad = 24;
    const k = Math.cos(((b.minLat + b.maxLat) / 2) * Math.PI / 180);
    const w = Math.max((b.maxLon - b.minLon) * k, 1e-5), h = Math.max(b.maxLat - b.minLat, 1e-5);
    const s = Math.min((c.width - 2 * pad) / w, (c.height - 2 * pad) / h);
    const ox = (c.width - w * s) / 2, oy = (c.height - h * s) / 2;
    const x = (lon) => ox + (lon - b.minLon) * k * s;
    const y = (lat) => c.height - oy - (lat - b.minLat) * s;
    for (const d of state.devices.values()) {
      if (d.trail.length > 1) {
        ctx.strokeStyle = d.color;
        ctx.globalAlpha = 0.45;
        ctx.lineWidth = 2;
        ctx.beginPath();
        d.trail.forEach(([la, lo], i) => (i ? ctx.lineTo(x(lo), y(la)) : ctx.moveTo(x(lo), y(la))));
        ctx.stroke();
      }
      const [la, lo] = d.trail[d.trail.length - 1];
      ctx.globalAlpha = 1;
      ctx.fillStyle = d.color;
      ctx.beginPath();
      ctx.arc(x(lo), y(la), 4, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  function renderTable() {
    const body = $("devices").tBodies[0];
    const rows = [...state.devices.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const now = Date.now();
    const frag = document.createDocumentFragment();
    for (const [id, d] of rows) {
      const tr = document.createElement("tr");
      const p = d.last;
      const age = (now - Date.parse(p.ts)) / 1000;
      const cells = [id, p.ts.slice(11, 23), age < 3600 ? age.toFixed(1) + " s" : "old", p.speed != null ? p.speed.toFixed(1) : "–"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 0) {
          const dot = document.createElement("span");
          dot.className = "dot";
          dot.style.background = d.color;
          td.appendChild(dot);
        }
        td.appendChild(document.createTextNode(text));
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  // Redraw at most 10 times a second, the table twice a second.
  setInterval(() => { if (state.dirty) { state.dirty = false; draw(); } }, 100);
  setInterval(() => {
    $("rate").textContent = rate().toFixed(1) + " pos/s";
    $("count").textContent = state.devices.size + " devices";
    if (!$("live-view").hidden) renderTable();
  }, 500);

  // ---- wiring ----
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    $("login-button").disabled = true;
    try {
      await api("POST", "/auth/login", { email: $("email").value, password: $("password").value, mode: "session" });
      const me = await whoAmI();
      if (!me) throw new Error("logged in, but /users/me refused the session cookie");
      await showLive(me);
    } catch (e) {
      $("login-error").textContent = e.message;
    } finally {
      $("login-button").disabled = false;
    }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/auth/logout", { mode: "session" }); } catch (e) { /* already gone */ }
    setConn("idle");
    showLogin("");
  });
  $("event").addEventListener("change", (ev) => follow(ev.target.value));

  (async () => {
    const me = await whoAmI();
    if (me) showLive(me); else showLogin("");
  })();
})();
