// edge-agent ui: the live page. Plain canvas, no library; data from /live (server-sent events).
"use strict";

const WINDOW_S = 20;       // seconds of signal on each plot
const TIMELINE_S = 60;     // seconds of labels on each timeline
const COLORS = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#f538a0", "#5f6368"];
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const sensors = new Map();  // name -> state
const labelColors = new Map();
// What tests and the curious can read: the newest sample time and point count per sensor.
const exposed = { lastT: {}, points: {}, states: {}, results: 0, health: 0, daemon: null };
window.edgeAgentUi = exposed;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function labelColor(label) {
  if (!labelColors.has(label)) labelColors.set(label, COLORS[labelColors.size % COLORS.length]);
  return labelColors.get(label);
}

function sensor(name) {
  let s = sensors.get(name);
  if (s) return s;
  const card = el("article", { class: "sensor", "data-testid": `sensor-${name}` });
  const title = el("h2", {}, name);
  const badge = el("span", { class: "badge", "data-testid": `state-${name}` }, "…");
  const record = el("button", { class: "record", "data-testid": `record-${name}`, title: "Record this sensor's signals as CSV" }, "Record");
  const download = el("a", { href: "/api/record/download", "data-testid": `download-${name}`, hidden: "" }, "Download CSV");
  record.addEventListener("click", () => toggleRecording(name, record, download));
  const check = el("button", { class: "record", "data-testid": `test-${name}`, title: "Watch this sensor for 3 s and judge it" }, "Test");
  check.addEventListener("click", async () => {
    const body = await act("/api/sensor-test", `testing ${name} for 3 s`, { sensor: name });
    if (body && body.ok) document.getElementById("action").textContent = `${name}: ${body.verdict}`;
  });
  title.append(badge, check, record, download);
  const decision = el("div");
  const label = el("span", { class: "label", "data-testid": `label-${name}` }, "–");
  const confidence = el("span", { class: "confidence", "data-testid": `confidence-${name}` });
  decision.append(label, confidence);
  const figures = el("div", { class: "figures", "data-testid": `figures-${name}` });
  const plot = el("canvas", { class: "plot", "data-testid": `plot-${name}` });
  const legend = el("div", { class: "legend" });
  const timeline = el("canvas", { class: "timeline", "data-testid": `timeline-${name}` });
  plot.hidden = true;  // until the sensor's signals arrive (a sensor without models has none)
  card.append(title, decision, figures, plot, legend, timeline);
  document.getElementById("sensors").append(card);
  s = { name, badge, label, confidence, figures, plot, legend, timeline,
        t: [], v: [], channels: [], units: [], results: [] };
  sensors.set(name, s);
  return s;
}

function onSignals(r) {
  const s = sensor(r.sensor);
  if (s.channels.join() !== r.channels.join()) {
    s.channels = r.channels; s.units = r.units; s.t = []; s.v = r.channels.map(() => []);
    s.plot.hidden = false;
    s.legend.replaceChildren(...r.channels.map((c, i) => {
      const item = el("span"); const swatch = el("i");
      swatch.style.background = COLORS[i % COLORS.length];
      item.append(swatch, `${c} (${r.units[i]})`); return item;
    }));
  }
  const last = s.t.length ? s.t[s.t.length - 1] : -Infinity;
  for (let i = 0; i < r.t.length; i++) {
    if (r.t[i] <= last) continue;
    s.t.push(r.t[i]);
    for (let c = 0; c < r.v.length; c++) s.v[c].push(r.v[c][i]);
  }
  const cutoff = (s.t.length ? s.t[s.t.length - 1] : 0) - WINDOW_S;
  let drop = 0;
  while (drop < s.t.length && s.t[drop] < cutoff) drop++;
  if (drop) { s.t.splice(0, drop); for (const ch of s.v) ch.splice(0, drop); }
  exposed.lastT[r.sensor] = s.t.length ? s.t[s.t.length - 1] : null;
  exposed.points[r.sensor] = s.t.length;
  dirty = true;
}

function onResult(r) {
  const s = sensor(r.sensor);
  s.label.textContent = r.label;
  s.label.style.color = labelColor(r.label);
  s.confidence.textContent = `${(100 * r.confidence).toFixed(0)} % · ${r.model}`;
  s.results.push({ t: r.ts, label: r.label });
  const cutoff = r.ts - TIMELINE_S;
  while (s.results.length && s.results[0].t < cutoff) s.results.shift();
  exposed.results += 1;
  dirty = true;
}

function fmtAge(seconds) {
  if (seconds == null) return "–";
  if (seconds < 120) return `${seconds.toFixed(0)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function fmtBytes(n) {
  if (n < 1e6) return `${(n / 1e3).toFixed(0)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(1)} GB`;
}

function setBadge(node, text, kind) {
  node.textContent = text;
  node.className = `badge ${kind}`;
}

let seeded = false;

function onHealth(r) {
  const st = r.status;
  exposed.health += 1;
  if (!seeded) {  // the warnings and errors from before the page opened
    seeded = true;
    for (const e of st.last_errors || []) onEvent(e);
  }
  document.getElementById("device").textContent = `${st.device.id} · ${st.version}`;
  const degraded = st.health.degraded.length ? `degraded: ${st.health.degraded.join(", ")}` : "healthy";
  setBadge(document.getElementById("health"), `${st.state} · ${degraded}`, st.health.degraded.length ? "warn" : "ok");
  document.getElementById("uptime").textContent = `up ${fmtAge(st.uptime_s)}`;
  for (const [name, h] of Object.entries(st.sensors)) {
    const s = sensor(name);
    let text, kind;
    if (h.state === "disabled") { text = "disabled"; kind = ""; }
    else if (h.state !== "connected") { text = "lost"; kind = "bad"; }
    else if (h.seconds_since_data == null || h.seconds_since_data > 2) { text = "silent"; kind = "warn"; }
    else { text = "streaming"; kind = "ok"; }
    setBadge(s.badge, text, kind);
    exposed.states[name] = text;
    const rate = h.rate_hz == null ? "–" : `${h.rate_hz} Hz`;
    s.figures.textContent = `${h.link} · ${rate} · gaps ${h.gaps} · lost frames ${h.frames_lost} · CRC errors ${h.crc_errors} · windows dropped ${h.windows_dropped}`;
  }
  const rows = st.models.map((m) => {
    const tr = el("tr");
    const state = Object.values(st.sensors).map((h) => (h.models || {})[m.ref]).filter(Boolean);
    const probation = ((r.timing || {})[m.ref] || {}).probation ? " · on probation" : "";
    const timing = (r.timing || {})[m.ref] || {};
    const latency = timing.ms_per_call == null ? "–" : `${timing.ms_per_call.toFixed(2)} ms`;
    tr.append(el("td", {}, m.ref), el("td", {}, m.runtime), el("td", {}, latency),
              el("td", {}, (m.sensors || []).join(", ")),
              el("td", {}, [...new Set(state)].join(", ") + probation));
    return tr;
  });
  document.getElementById("models").replaceChildren(...rows);
  const mqtt = st.mqtt || {};
  const store = st.store || {};
  const items = [
    ["MQTT", `${st.mqtt_connected ? "connected" : "offline"} (${mqtt.broker || "?"})`],
    ["published / acked", `${mqtt.published ?? "–"} / ${mqtt.acked ?? "–"}`],
    ["outbox", `${st.outbox_depth ?? "?"} waiting${(r.storage || {}).outbox_oldest_age_s ? `, oldest ${fmtAge(r.storage.outbox_oldest_age_s)}` : ""}`],
    ["disk", r.storage && r.storage.disk_total_bytes ? `${fmtBytes(r.storage.disk_free_bytes)} free of ${fmtBytes(r.storage.disk_total_bytes)} · database ${fmtBytes(r.storage.db_bytes || 0)}` : "–"],
    ["windows stored", `${st.windows_committed}`],
    ["store", `${(store.path || "?").split("/").pop()}${store.disk_full ? " · DISK FULL" : ""}`],
    ["last MQTT error", mqtt.last_error || "–"],
  ];
  document.getElementById("uplink").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function onEvent(r) {
  const list = document.getElementById("events");
  const when = new Date(r.ts * 1000).toLocaleTimeString();
  const detail = Object.entries(r.detail || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  const item = el("li", { class: r.severity }, `${when} ${r.event}${r.sensor ? ` [${r.sensor}]` : ""} ${detail}`);
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
}

function onDaemon(r) {
  exposed.daemon = r.connected;
  setBadge(document.getElementById("daemon"), r.connected ? "daemon connected" : `daemon not answering${r.error ? `: ${r.error}` : ""}`, r.connected ? "ok" : "bad");
}

// -- drawing ------------------------------------------------------------------------------------

let dirty = false;

function fit(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  return [w, h];
}

function drawPlot(s) {
  const ctx = s.plot.getContext("2d");
  const [w, h] = fit(s.plot);
  ctx.clearRect(0, 0, w, h);
  if (s.t.length < 2) return;
  const end = s.t[s.t.length - 1];
  const start = end - WINDOW_S;
  let lo = Infinity, hi = -Infinity;
  for (const ch of s.v) for (const x of ch) { if (x < lo) lo = x; if (x > hi) hi = x; }
  if (hi - lo < 1e-6) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  ctx.strokeStyle = "#eef0f2"; ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) { const y = (k / 4) * h; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); }
  s.v.forEach((ch, c) => {
    ctx.strokeStyle = COLORS[c % COLORS.length]; ctx.lineWidth = 1.2; ctx.beginPath();
    for (let i = 0; i < ch.length; i++) {
      const x = ((s.t[i] - start) / WINDOW_S) * w;
      const y = h - ((ch[i] - lo) / (hi - lo)) * h;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
  });
  ctx.fillStyle = "#66707a"; ctx.font = `${11 * (window.devicePixelRatio || 1)}px system-ui`;
  ctx.fillText(hi.toFixed(2), 4, 12 * (window.devicePixelRatio || 1)); ctx.fillText(lo.toFixed(2), 4, h - 4);
}

function drawTimeline(s) {
  const ctx = s.timeline.getContext("2d");
  const [w, h] = fit(s.timeline);
  ctx.clearRect(0, 0, w, h);
  if (!s.results.length) return;
  const end = Math.max(s.results[s.results.length - 1].t, Date.now() / 1000);
  const start = end - TIMELINE_S;
  for (let i = 0; i < s.results.length; i++) {
    const a = s.results[i].t;
    const b = i + 1 < s.results.length ? s.results[i + 1].t : end;
    ctx.fillStyle = labelColor(s.results[i].label);
    ctx.fillRect(((a - start) / TIMELINE_S) * w, 0, Math.max(1, ((b - a) / TIMELINE_S) * w), h);
  }
}

function frame() {
  if (dirty) { dirty = false; for (const s of sensors.values()) { drawPlot(s); drawTimeline(s); } }
  setTimeout(() => requestAnimationFrame(frame), 100);
}
requestAnimationFrame(frame);

// -- live feed and actions ----------------------------------------------------------------------

const handlers = { signals: onSignals, result: onResult, health: onHealth, event: onEvent, daemon: onDaemon };
const live = new EventSource("/live");
live.onmessage = (message) => {
  const r = JSON.parse(message.data);
  const handle = handlers[r.type];
  if (handle) handle(r);
};
live.onerror = () => onDaemon({ connected: false, error: "page feed interrupted; retrying" });

async function act(path, what, payload = {}) {
  const out = document.getElementById("action");
  out.textContent = `${what}…`;
  try {
    const reply = await fetch(path, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(payload),
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
    });
    const body = await reply.json();
    out.textContent = body.ok ? `${what}: done` : `${what} failed: ${body.error || reply.status}`;
    return body;
  } catch (err) {
    out.textContent = `${what} failed: ${err}`;
    return null;
  }
}
let recordingSensor = null;

async function toggleRecording(name, button, link) {
  const starting = recordingSensor !== name;
  for (const a of document.querySelectorAll("a[data-testid^=download-]")) a.hidden = true;
  for (const b of document.querySelectorAll("button.record")) b.textContent = "Record";
  const body = await act(starting ? "/api/record/start" : "/api/record/stop",
                         starting ? `recording ${name}` : "recording", { sensor: name });
  if (starting && body && body.ok) { recordingSensor = name; button.textContent = "Stop"; }
  if (!starting) {
    recordingSensor = null;
    if (body && body.ok && body.rows > 0) link.hidden = false;
    document.getElementById("action").textContent = body && body.ok ? `recorded ${body.rows} samples of ${name} in ${body.seconds} s` : `recording failed: ${(body && body.error) || "?"}`;
  }
}

document.getElementById("reload").addEventListener("click", () => act("/api/reload", "reload"));
