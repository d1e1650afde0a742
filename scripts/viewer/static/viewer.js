// trm-live dev viewer. Talks to its own origin only, as the production SPA:
// Directus session login (httpOnly cookie), /items/events, then /ws-live
// (contract v1). No framework, no build step.
"use strict";
(function () {
  const TRAIL = 24;            // positions kept per device for the trail
  const RATE_WINDOW_MS = 5000; // positions/s is averaged over this window
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const state = {
    user: null,         // {id,email}
    eventId: "",        // followed event
    topic: "",
    ws: null,
    conn: "idle",       // idle | connecting | open | reconnecting | closed | unauthorized
    attempt: 0,         // reconnect attempt, for the backoff
    timer: 0,
    reqSeq: 0,
    devices: new Map(), // device_id -> {trail:[{lat,lon,ts}], last: position, color}
    received: 0,        // positions received since the page loaded
    arrivals: [],       // [ms, n] for the rate
    lastClose: null,    // {code, reason}
    bounds: null,       // {minLat,maxLat,minLon,maxLon}
    dirty: true,
  };

  // ---- state for tests (read by the e2e test through CDP) ----
  window.trmViewer = {
    stats() {
      return {
        connection: state.conn, user: state.user ? state.user.email : null, topic: state.topic,
        devices: state.devices.size, positions: state.received, rate: rate(), lastClose: state.lastClose,
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

  // ---- WebSocket /ws-live ----
  function follow(eventId) {
    state.eventId = eventId;
    state.topic = "event:" + eventId;
    $("topic").textContent = state.topic;
    state.devices.clear();
    state.bounds = null;
    state.dirty = true;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      // Re-use the connection: the server replaces nothing, so unsubscribe
      // whatever else this page followed first.
      for (const t of state.subscribed || []) {
        if (t !== state.topic) send({ type: "unsubscribe", topic: t, id: "u" + ++state.reqSeq });
      }
      subscribe();
    } else {
      connect();
    }
  }

  function send(obj) { if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj)); }
  function subscribe() {
    state.subscribed = [state.topic];
    send({ type: "subscribe", topic: state.topic, id: "s" + ++state.reqSeq });
  }

  function connect() {
    clearTimeout(state.timer);
    stopSocket();
    setConn(state.attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws-live");
    state.ws = ws;
    ws.onopen = () => {
      if (ws !== state.ws) return;
      setConn("open");
      message("");
      subscribe();
    };
    ws.onmessage = (ev) => { if (ws === state.ws) onFrame(ev.data); };
    ws.onclose = (ev) => {
      if (ws !== state.ws) return;
      state.ws = null;
      state.lastClose = { code: ev.code, reason: ev.reason };
      if (ev.code === 4401) {
        // The session is gone (expired, logged out elsewhere): log in again.
        setConn("unauthorized");
        showLogin("Your session has ended; log in again.");
        return;
      }
      // Anything else (server restart, network, 1013 try again later):
      // reconnect with exponential backoff and jitter, then re-subscribe.
      setConn("closed");
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt) * (0.5 + Math.random() / 2);
      state.attempt++;
      message("connection closed (" + ev.code + (ev.reason ? " " + ev.reason : "") + "); retrying in " + (delay / 1000).toFixed(1) + " s");
      state.timer = setTimeout(connect, delay);
    };
  }

  function stopSocket() {
    clearTimeout(state.timer);
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onclose = null;
      ws.close(1000, "bye");
    }
  }

  function onFrame(data) {
    let f;
    try { f = JSON.parse(data); } catch (e) { return; }
    switch (f.type) {
      case "subscribed":
        if (f.topic !== state.topic) return;
        state.attempt = 0; // a healthy connection resets the backoff
        for (const p of f.snapshot || []) addPosition(p, false);
        break;
      case "positions":
        if (f.topic !== state.topic) return;
        for (const p of f.positions || []) addPosition(p, true);
        break;
      case "unsubscribed":
        break;
      case "error":
        message(f.code + ": " + f.message);
        break;
    }
  }

  function addPosition(p, live) {
    let d = state.devices.get(p.device_id);
    if (!d) {
      d = { trail: [], last: null, color: colorOf(p.device_id) };
      state.devices.set(p.device_id, d);
    }
    // Drop stale items (a snapshot after a reconnect may be older than what
    // we hold).
    if (d.last && p.ts < d.last.ts) return;
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
      state.attempt = 0;
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
