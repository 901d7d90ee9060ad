// The dashboard page (http/dashboard.hpp): one HTML document with its CSS and JS, compiled in,
// loading nothing from elsewhere. It polls the node's JSON API once a second and draws this node,
// the peers it knows and the agents between them (docs/observability.md, "The page").
#include "agents/http/dashboard.hpp"

namespace sojourn {

namespace {

constexpr std::string_view kPage = R"page(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sojourn dashboard</title>
<style>
  :root { --bg:#0f1419; --panel:#182029; --line:#2b3844; --text:#d8e0e8; --dim:#8a99a8;
          --accent:#4fb3ff; --ok:#5fd38d; --warn:#f0b450; --bad:#ff6b6b; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; gap:2em; align-items:baseline; padding:12px 20px; border-bottom:1px solid var(--line); }
  header h1 { font-size:18px; margin:0; }
  header .stat { color:var(--dim); } header .stat b { color:var(--text); font-weight:600; }
  main { display:grid; grid-template-columns: minmax(420px, 1.2fr) 1fr; gap:16px; padding:16px 20px; }
  section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px; min-width:0; }
  section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 8px; }
  #map { width:100%; height:380px; }
  #map .node circle { fill:#22303c; stroke:var(--accent); stroke-width:2; }
  #map .node.self circle { stroke:var(--ok); stroke-width:3; }
  #map .node text { fill:var(--text); font-size:12px; text-anchor:middle; }
  #map .hop { stroke:var(--accent); stroke-opacity:.35; fill:none; }
  #map .agent { transition: transform 0.9s ease-in-out; }
  #map .agent circle { stroke:#0008; }
  #map .agent-label { fill:var(--dim); font-size:10px; font-family:ui-monospace, monospace; }
  table { width:100%; border-collapse:collapse; font-size:13px; }
  th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); white-space:nowrap; }
  th { cursor:pointer; color:var(--dim); user-select:none; } th.sorted { color:var(--accent); }
  td.hops { white-space:normal; font-family:ui-monospace, monospace; font-size:12px; }
  input { background:#0f1419; color:var(--text); border:1px solid var(--line); border-radius:4px; padding:4px 8px; width:100%; margin-bottom:8px; }
  .st-finished { color:var(--ok); } .st-failed, .st-stranded { color:var(--bad); } .st-moving { color:var(--warn); }
  .mono { font-family:ui-monospace, monospace; }
  #errors li { color:var(--bad); } #events li { color:var(--dim); } ul { margin:0; padding-left:1.2em; max-height:220px; overflow:auto; }
  .wide { grid-column: 1 / -1; }
  canvas { width:100%; height:140px; }
</style>
</head>
<body>
<header>
  <h1>sojourn · <span id="node-name">…</span></h1>
  <span class="stat">address <b id="node-address" class="mono">…</b></span>
  <span class="stat">uptime <b id="uptime">0</b></span>
  <span class="stat">requests/s <b id="rate">0</b></span>
  <span class="stat">hops in/out <b id="hops">0 / 0</b></span>
  <span class="stat">eval p50 <b id="eval-p50">–</b></span>
  <span class="stat">step p50 <b id="step-p50">–</b></span>
</header>
<main>
  <section><h2>Map: this node, its peers, the agents between them</h2>
    <svg id="map" viewBox="0 0 600 380" role="img" aria-label="map of nodes and agents">
      <g id="edges"></g><g id="nodes"></g><g id="agent-dots"></g>
    </svg></section>
  <section><h2>Latency (seconds, p50 of evaluations and agent steps)</h2>
    <canvas id="latency" width="600" height="140"></canvas>
    <h2 style="margin-top:12px">Recent errors</h2><ul id="errors"></ul></section>
  <section class="wide"><h2>Agents</h2>
    <input id="filter" placeholder="filter: id, status, node…">
    <table id="agents"><thead><tr>
      <th data-key="id">id</th><th data-key="status">status</th><th data-key="location">where</th>
      <th data-key="home">home</th><th data-key="epoch">hops</th><th data-key="route">where it has been</th>
    </tr></thead><tbody></tbody></table></section>
  <section class="wide"><h2>Events</h2><ul id="events"></ul></section>
</main>
<script>
"use strict";
const state = { node: null, agents: [], since: 0, sortKey: "id", sortUp: true, lastReq: null, lastT: 0,
                latency: [], positions: {} };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const palette = ["#4fb3ff", "#5fd38d", "#f0b450", "#c58cff", "#ff8c69", "#6fe0e0", "#e6e66f"];
function colour(id) { let h = 0; for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0; return palette[h % palette.length]; }
function fmtSeconds(s) { return s === 0 ? "–" : s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s"; }
function el(tag, attrs, text) { const e = document.createElementNS(SVG, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
function route(a) { return a.hops.map((h) => h.node).join(" → "); }

function layout(nodes) {
  const pos = {}; const n = nodes.length; const cx = 300, cy = 190, r = n === 1 ? 0 : 140;
  nodes.forEach((name, i) => { const t = -Math.PI / 2 + (2 * Math.PI * i) / n; pos[name] = [cx + r * Math.cos(t), cy + r * Math.sin(t)]; });
  return pos;
}

function drawMap() {
  const self = state.node.address;
  const names = [self, ...state.node.peers];
  for (const a of state.agents) for (const h of a.hops) if (!names.includes(h.node)) names.push(h.node);
  const pos = layout(names); state.positions = pos;
  const edges = $("edges"); edges.replaceChildren();
  const seen = new Set();
  for (const a of state.agents) for (let i = 1; i < a.hops.length; i++) {
    const from = a.hops[i - 1].node, to = a.hops[i].node, key = from + ">" + to;
    if (seen.has(key) || !pos[from] || !pos[to]) continue; seen.add(key);
    const [x1, y1] = pos[from], [x2, y2] = pos[to];
    const mx = (x1 + x2) / 2 + (y2 - y1) * 0.15, my = (y1 + y2) / 2 - (x2 - x1) * 0.15;
    edges.append(el("path", { class: "hop", "data-from": from, "data-to": to, d: `M${x1},${y1} Q${mx},${my} ${x2},${y2}`, "stroke-width": 2 }));
  }
  const nodes = $("nodes"); nodes.replaceChildren();
  for (const name of names) {
    const g = el("g", { class: "node" + (name === self ? " self" : ""), "data-node": name, transform: `translate(${pos[name][0]},${pos[name][1]})` });
    g.append(el("circle", { r: 26 }), el("text", { y: 44 }, name), el("text", { y: 4 }, name === self ? state.node.name : ""));
    nodes.append(g);
  }
  const dots = $("agent-dots"); const keep = new Set();
  state.agents.forEach((a, i) => {
    const where = a.location || a.home; if (!pos[where]) return; keep.add(a.id);
    let g = dots.querySelector(`[data-agent="${a.id}"]`);
    if (!g) { g = el("g", { class: "agent", "data-agent": a.id }); g.append(el("circle", { r: 7, fill: colour(a.id) }), el("text", { x: 10, y: 4, class: "agent-label" }, a.id.slice(0, 6)), el("title", {}, a.id)); dots.append(g); }
    const angle = (i * 2.4) % (2 * Math.PI), x = pos[where][0] + 34 * Math.cos(angle), y = pos[where][1] + 34 * Math.sin(angle);
    g.style.transform = `translate(${x}px, ${y}px)`; g.setAttribute("data-location", where); g.setAttribute("data-status", a.status);
    g.querySelector("circle").setAttribute("opacity", a.status === "finished" || a.status === "failed" ? 0.45 : 1);
  });
  for (const g of [...dots.children]) if (!keep.has(g.getAttribute("data-agent"))) g.remove();
}

function drawTable() {
  const filter = $("filter").value.trim().toLowerCase();
  const rows = state.agents.map((a) => ({ ...a, route: route(a) }))
    .filter((a) => !filter || [a.id, a.status, a.location, a.home, a.route].join(" ").toLowerCase().includes(filter));
  const k = state.sortKey, dir = state.sortUp ? 1 : -1;
  rows.sort((x, y) => (x[k] > y[k] ? 1 : x[k] < y[k] ? -1 : 0) * dir);
  const body = $("agents").tBodies[0]; body.replaceChildren();
  for (const a of rows) {
    const tr = document.createElement("tr"); tr.dataset.agent = a.id;
    for (const [text, cls] of [[a.id, "mono"], [a.status, "st-" + a.status], [a.location, "mono"], [a.home, "mono"], [String(a.epoch), ""], [a.route, "hops"]]) {
      const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.append(td);
    }
    body.append(tr);
  }
  for (const th of $("agents").tHead.rows[0].cells) th.classList.toggle("sorted", th.dataset.key === k);
}

function drawLatency() {
  const c = $("latency"), g = c.getContext("2d"); g.clearRect(0, 0, c.width, c.height);
  const pts = state.latency; if (pts.length < 2) return;
  const max = Math.max(1e-4, ...pts.map((p) => Math.max(p.eval, p.step)));
  g.strokeStyle = "#2b3844"; g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  g.fillStyle = "#8a99a8"; g.font = "11px sans-serif"; g.fillText(fmtSeconds(max), 4, 12);
  for (const [key, colr] of [["eval", "#4fb3ff"], ["step", "#5fd38d"]]) {
    g.strokeStyle = colr; g.beginPath();
    pts.forEach((p, i) => { const x = (i / (pts.length - 1)) * c.width, y = c.height - (p[key] / max) * (c.height - 16); i ? g.lineTo(x, y) : g.moveTo(x, y); });
    g.stroke(); g.fillStyle = colr; g.fillText(key, c.width - (key === "eval" ? 70 : 36), 12);
  }
}

function addEvents(events) {
  const list = $("events"), errors = $("errors");
  for (const e of events) {
    const li = document.createElement("li"); li.dataset.seq = e.seq; li.dataset.kind = e.kind;
    li.textContent = `#${e.seq} ${new Date(e.unix_ms).toLocaleTimeString()} ${e.kind} ${e.agent ? e.agent.slice(0, 8) : ""} ${e.peer} ${e.detail}`;
    if (e.kind === "error" || (e.kind === "end" && e.detail.startsWith("failed"))) { errors.prepend(li.cloneNode(true)); }
    list.prepend(li);
  }
  while (list.children.length > 200) list.lastChild.remove();
  while (errors.children.length > 50) errors.lastChild.remove();
}

async function poll() {
  try {
    const [node, agents, trace] = await Promise.all([
      fetch("/api/node").then((r) => r.json()), fetch("/api/agents").then((r) => r.json()),
      fetch("/api/trace?since=" + state.since).then((r) => r.json())]);
    state.node = node; state.agents = agents.agents;
    $("node-name").textContent = node.name; $("node-address").textContent = node.address;
    $("uptime").textContent = Math.round(node.uptime_s) + " s";
    const served = node.calls_served + node.evals_served, now = node.uptime_s;
    if (state.lastReq !== null && now > state.lastT) $("rate").textContent = ((served - state.lastReq) / (now - state.lastT)).toFixed(1);
    state.lastReq = served; state.lastT = now;
    $("hops").textContent = node.hops_in + " / " + node.hops_out;
    $("eval-p50").textContent = fmtSeconds(node.eval_latency.p50_s); $("step-p50").textContent = fmtSeconds(node.step_latency.p50_s);
    state.latency.push({ eval: node.eval_latency.p50_s, step: node.step_latency.p50_s }); if (state.latency.length > 120) state.latency.shift();
    addEvents(trace.events); if (trace.events.length) state.since = trace.events[trace.events.length - 1].seq;
    drawMap(); drawTable(); drawLatency();
    document.body.dataset.loaded = "yes";
  } catch (err) { $("node-name").textContent = "unreachable (" + err + ")"; }
}

for (const th of $("agents").tHead.rows[0].cells) th.addEventListener("click", () => {
  if (state.sortKey === th.dataset.key) state.sortUp = !state.sortUp; else { state.sortKey = th.dataset.key; state.sortUp = true; }
  drawTable();
});
$("filter").addEventListener("input", drawTable);
poll(); setInterval(poll, 1000);
</script>
</body>
</html>
)page";

}  // namespace

std::string_view dashboard_page() { return kPage; }

}  // namespace sojourn
