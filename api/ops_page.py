"""The HTML of the ops page (api/ops.py fills in {{nonce}}, {{version}} and {{initial}}, the state as JSON).

One script renders the state: at once from the copy in the document, then from
/ops/state.json every `refresh_s`. Each figure's element is `#f-<name>` (the
name of the figure in state.json), with the raw number in `data-value`.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>selftune ingest: ops</title>
<style nonce="{{nonce}}">
  :root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f7f8fa; --card: #fff;
          --accepted: #2f6fdb; --written: #17a05d; --lag: #d9822b; --bad: #c4320a; --warn: #b54708; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
         background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px; background: var(--card);
           border-bottom: 1px solid var(--line); }
  header h1 { font-size: 17px; margin: 0; }
  header .meta { color: var(--muted); font-size: 12px; }
  header .meta.stale { color: var(--bad); font-weight: 600; }
  main { padding: 16px 24px 32px; max-width: 1280px; }
  .problems { background: #fef3f2; border: 1px solid #fecdca; color: var(--bad); padding: 8px 12px;
              border-radius: 6px; margin-bottom: 14px; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 12px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  .card h2, section h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted);
                         margin: 0 0 8px; font-weight: 600; }
  dl { display: grid; grid-template-columns: 1fr auto; gap: 3px 12px; margin: 0; }
  dt { color: var(--muted); }
  dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
  dd.bad { color: var(--bad); }
  dd.warn { color: var(--warn); }
  .plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px; margin-top: 12px; }
  svg { width: 100%; height: auto; display: block; }
  svg text { font-size: 10px; fill: var(--muted); }
  .legend { font-size: 12px; color: var(--muted); margin-left: 8px; font-weight: 400; text-transform: none;
            letter-spacing: 0; }
  .legend b { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin: 0 4px 0 10px; }
  .legend .accepted { background: repeating-linear-gradient(90deg, var(--accepted) 0 5px, transparent 5px 8px); } .legend .written { background: var(--written); }
  .legend .lag { background: var(--lag); }
  section.pushes { margin-top: 12px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; font-size: 12px; }
  td.num, th.num { text-align: right; }
  td.err { white-space: normal; color: var(--bad); max-width: 320px; overflow-wrap: anywhere; }
  .status { padding: 1px 7px; border-radius: 9px; font-size: 12px; background: #eef2f6; }
  .status.processed { background: #dcfae6; color: #085d3a; }
  .status.failed { background: #fee4e2; color: var(--bad); }
  .empty { color: var(--muted); text-align: center; padding: 12px; }
</style>
</head>
<body>
<header>
  <h1>selftune ingest &middot; ops</h1>
  <span class="meta">version {{version}}</span>
  <span class="meta" id="updated">&nbsp;</span>
</header>
<main>
  <div class="problems" id="problems" hidden></div>
  <div class="cards">
    <div class="card"><h2>Queue</h2><dl>
      <dt>queued batches</dt><dd id="f-queue_depth">&ndash;</dd>
      <dt>lag (oldest not moving)</dt><dd id="f-lag_seconds">&ndash;</dd>
      <dt>being written</dt><dd id="f-in_progress">&ndash;</dd>
      <dt>stalled (worker died)</dt><dd id="f-stalled">&ndash;</dd>
      <dt>waiting for a retry</dt><dd id="f-retrying">&ndash;</dd>
      <dt>failed (replayable)</dt><dd id="f-failed">&ndash;</dd>
    </dl></div>
    <div class="card"><h2>Workers</h2><dl>
      <dt>busy</dt><dd id="f-workers_busy">&ndash;</dd>
      <dt>idle</dt><dd id="f-workers_idle">&ndash;</dd>
      <dt>suspended</dt><dd id="f-workers_suspended">&ndash;</dd>
    </dl></div>
    <div class="card"><h2>Records</h2><dl>
      <dt>accepted / s (1 min)</dt><dd id="f-accepted_records_per_s">&ndash;</dd>
      <dt>written / s (1 min)</dt><dd id="f-written_records_per_s">&ndash;</dd>
      <dt>quarantined (pending)</dt><dd id="f-quarantined">&ndash;</dd>
    </dl></div>
    <div class="card"><h2>Spool (this api's host)</h2><dl>
      <dt>spooled batches</dt><dd id="f-spool_batches">&ndash;</dd>
      <dt>bytes</dt><dd id="f-spool_bytes">&ndash;</dd>
      <dt>oldest</dt><dd id="f-spool_oldest_seconds">&ndash;</dd>
    </dl></div>
  </div>
  <div class="plots">
    <div class="card"><h2>Records per second, last hour<span class="legend"><b class="accepted"></b>accepted
      <b class="written"></b>written</span></h2><svg id="plot-rates" viewBox="0 0 560 150"></svg></div>
    <div class="card"><h2>Lag, last hour<span class="legend"><b class="lag"></b>seconds</span></h2>
      <svg id="plot-lag" viewBox="0 0 560 150"></svg></div>
  </div>
  <section class="card pushes"><h2>Recent pushes</h2>
    <table id="pushes"><thead><tr><th>push id</th><th>workspace</th><th>status</th><th>received (UTC)</th>
      <th class="num">written</th><th class="num">rejected</th><th class="num">attempts</th>
      <th class="num">write ms</th><th>error</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script id="initial" type="application/json">{{initial}}</script>
<script nonce="{{nonce}}">
"use strict";
const QUEUE = ["queue_depth", "lag_seconds", "in_progress", "stalled", "retrying", "failed", "workers_busy",
               "workers_idle", "workers_suspended", "accepted_records_per_s", "written_records_per_s"];
const BAD_WHEN_POSITIVE = new Set(["failed", "stalled"]);
const WARN_WHEN_POSITIVE = new Set(["workers_suspended", "spool_batches", "quarantined"]);
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let lastOk = Date.now();

function seconds(v) { return v < 120 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min"; }
function bytes(v) { return v < 1024 ? v + " B" : v < 1048576 ? (v / 1024).toFixed(1) + " KiB"
                                               : (v / 1048576).toFixed(1) + " MiB"; }
function text(name, v) {
  if (v === null || v === undefined) return "\\u2013";
  if (name === "lag_seconds" || name === "spool_oldest_seconds") return seconds(v);
  if (name === "spool_bytes") return bytes(v);
  return String(v);
}
function figure(name, v) {
  const el = $("f-" + name);
  el.textContent = text(name, v);
  el.dataset.value = v === null || v === undefined ? "" : String(v);
  el.classList.toggle("bad", BAD_WHEN_POSITIVE.has(name) && v > 0);
  el.classList.toggle("warn", WARN_WHEN_POSITIVE.has(name) && v > 0);
}
function el(tag, attrs, content) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (content !== undefined) node.textContent = content;
  return node;
}
function ceiling(v) {
  if (v <= 0) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= v) return m * step;
  return 10 * step;
}
function plot(svg, series, now) {
  const W = 560, H = 150, L = 46, R = 10, T = 10, B = 22, span = 3600;
  let top = 0;
  for (const s of series) for (const p of s.points) top = Math.max(top, p[1]);
  top = ceiling(top * 1.05);
  const x = (t) => L + (t - (now - span)) / span * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  svg.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    svg.append(el("line", {x1: L, x2: W - R, y1: y(top * f), y2: y(top * f), stroke: "#e4e7ec"}));
    svg.append(el("text", {x: L - 6, y: y(top * f) + 3, "text-anchor": "end"}, +(top * f).toPrecision(3)));
  }
  for (const [label, t] of [["-60 min", now - span], ["-30 min", now - span / 2], ["now", now]]) {
    const anchor = label === "now" ? "end" : label === "-60 min" ? "start" : "middle";
    svg.append(el("text", {x: x(t), y: H - 6, "text-anchor": anchor}, label));
  }
  for (const s of series) {
    let d = "", prev = null;
    for (const [t, v] of s.points) {
      d += (prev === null || t - prev > 25 ? "M" : "L") + x(t).toFixed(1) + " " + y(v).toFixed(1) + " ";
      prev = t;
    }
    if (d) svg.append(el("path", {d: d, fill: "none", stroke: s.color, "stroke-width": 1.8,
                                   "stroke-dasharray": s.dash || "none", "stroke-linejoin": "round",
                                   class: "series " + s.name}));
    const last = s.points[s.points.length - 1];
    if (last) svg.append(el("circle", {cx: x(last[0]), cy: y(last[1]), r: 2.5, fill: s.color}));
  }
  if (!series.some((s) => s.points.length)) {
    svg.append(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no samples yet (one every 10 s)"));
  }
}
function cell(row, content, cls) {
  const td = row.insertCell();
  td.textContent = content === null || content === undefined ? "" : String(content);
  if (cls) td.className = cls;
  return td;
}
function render(s) {
  const q = s.queue;
  for (const name of QUEUE) figure(name, q ? q[name] : null);
  figure("quarantined", s.quarantined);
  figure("spool_batches", s.spool ? s.spool.batches : null);
  figure("spool_bytes", s.spool ? s.spool.bytes : null);
  figure("spool_oldest_seconds", s.spool ? s.spool.oldest_seconds : null);
  const problems = $("problems");
  problems.hidden = s.problems.length === 0;
  problems.textContent = s.problems.join("; ");
  const body = $("pushes").tBodies[0];
  body.replaceChildren();
  if (!s.pushes || s.pushes.length === 0) {
    const td = cell(body.insertRow(), s.pushes ? "no pushes yet" : "Postgres unreachable", "empty");
    td.colSpan = 9;
  }
  for (const p of s.pushes || []) {
    const row = body.insertRow();
    row.dataset.pushId = p.push_id;
    cell(row, p.push_id).title = p.push_id;
    cell(row, p.workspace || p.workspace_id).title = p.workspace_id;
    const badge = document.createElement("span");
    badge.className = "status " + p.status;
    badge.textContent = p.status;
    row.insertCell().append(badge);
    cell(row, p.received_at.replace("T", " ").replace("+00:00", ""));
    cell(row, p.written, "num");
    cell(row, p.rejected, "num");
    cell(row, p.attempts, "num");
    cell(row, p.write_ms, "num");
    cell(row, p.error, "err");
  }
  const now = Date.parse(s.generated_at) / 1000;
  plot($("plot-rates"), [
    {name: "written", color: "#17a05d", points: s.history.map((h) => [h.t, h.written_per_s])},
    {name: "accepted", color: "#2f6fdb", dash: "5 3", points: s.history.map((h) => [h.t, h.accepted_per_s])},
  ], now);
  plot($("plot-lag"), [{name: "lag", color: "#d9822b", points: s.history.map((h) => [h.t, h.lag_s])}], now);
  const updated = $("updated");
  updated.textContent = "updated " + s.generated_at.replace("T", " ").replace("+00:00", " UTC")
                        + " \\u00b7 every " + s.refresh_s + " s";
  updated.classList.remove("stale");
  document.body.dataset.generatedAt = s.generated_at;
}
async function refresh(every) {
  try {
    const resp = await fetch(location.pathname.replace(/\\/?$/, "/state.json"),
                             {credentials: "same-origin", cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    lastOk = Date.now();
  } catch (err) {
    const updated = $("updated");
    updated.textContent = "refresh failed (" + err.message + "); last figures "
                          + Math.round((Date.now() - lastOk) / 1000) + " s old";
    updated.classList.add("stale");
  }
  setTimeout(() => refresh(every), every * 1000);
}
const initial = JSON.parse($("initial").textContent);
render(initial);
setTimeout(() => refresh(initial.refresh_s), initial.refresh_s * 1000);
</script>
</body>
</html>
"""
