// The dashboard page: fetch the report and the timeline, fill in the numbers,
// draw two charts as plain SVG. No libraries, so it works offline.
"use strict";

const FORMATS = {
  count: (v) => String(Math.round(v)),
  seconds: (v) => v.toFixed(1) + " s",
  usd: (v) => "$" + v.toFixed(4),
  usd2: (v) => "$" + v.toFixed(2),
  ratio: (v) => (100 * v).toFixed(1) + " %",
};

function lookup(doc, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), doc);
}

function fillNumbers(report) {
  for (const el of document.querySelectorAll("[data-field]")) {
    const value = lookup(report, el.dataset.field);
    el.dataset.value = value == null ? "null" : JSON.stringify(value);
    el.textContent = value == null ? "n/a" : FORMATS[el.dataset.format](value);
  }
  const parts = Object.values(report.cost_breakdown_usd || {});
  const largest = Math.max(1e-12, ...parts);
  for (const el of document.querySelectorAll("[data-bar]")) {
    const value = lookup(report, el.dataset.bar) || 0;
    el.style.width = (100 * value / largest).toFixed(1) + "%";
  }
  const w = report.window || {};
  if (w.start) {
    // The report gives ISO 8601 times.
    const fmt = (t) => new Date(t).toLocaleString();
    document.getElementById("window").textContent =
      `window ${fmt(w.start)} – ${fmt(w.end)} (${(w.hours || 0).toFixed(2)} h)`;
  }
  document.getElementById("source").textContent =
    `prices: ${report.pricing_source || "?"}` +
    (report.instance_type ? `, workers as ${report.instance_type}` : "");
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function drawTimeline(timeline) {
  const svg = document.getElementById("timeline");
  svg.replaceChildren();
  const samples = timeline.samples;
  const W = 900, H = 260, L = 40, R = 60, T = 10, B = 30;
  if (samples.length < 2) {
    el("text", { x: L, y: H / 2, class: "tick" }, svg).textContent = "no samples yet";
    return;
  }
  const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1e-9, t1 - t0);
  const countMax = Math.max(1, ...samples.map((s) => Math.max(s.queued, s.workers_running)));
  const costMax = Math.max(1e-9, ...samples.map((s) => s.cost_rate_usd_per_hour));
  const y = (v) => H - B - (H - T - B) * v / countMax;
  const yc = (v) => H - B - (H - T - B) * v / costMax;
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  el("text", { x: 4, y: T + 10, class: "tick" }, svg).textContent = String(countMax);
  el("text", { x: W - R + 4, y: T + 10, class: "tick" }, svg).textContent =
    "$" + costMax.toFixed(2);
  el("text", { x: L, y: H - 8, class: "tick" }, svg).textContent =
    new Date(t0 * 1000).toLocaleTimeString();
  el("text", { x: W - R - 60, y: H - 8, class: "tick" }, svg).textContent =
    new Date(t1 * 1000).toLocaleTimeString();
  const step = (key, scale) => samples.map((s, i) => {
    const px = x(s.at), py = scale(s[key]);
    if (i === 0) return `M${px},${py}`;
    return `H${px}V${py}`;
  }).join("");
  el("path", { d: step("queued", y), fill: "none", stroke: "var(--queued)",
    "stroke-width": 2, "data-series": "queued" }, svg);
  el("path", { d: step("workers_running", y), fill: "none", stroke: "var(--workers)",
    "stroke-width": 2, "data-series": "workers" }, svg);
  el("path", { d: step("cost_rate_usd_per_hour", yc), fill: "none",
    stroke: "var(--cost)", "stroke-width": 1.5, "stroke-dasharray": "4 3",
    "data-series": "cost" }, svg);
}

function drawLatency(timeline) {
  const svg = document.getElementById("latency");
  svg.replaceChildren();
  const values = timeline.latencies_seconds;
  const W = 900, H = 220, L = 40, R = 20, T = 10, B = 30;
  if (!values.length) {
    el("text", { x: L, y: H / 2, class: "tick" }, svg).textContent = "no scans yet";
    return;
  }
  const lo = Math.min(...values), hi = Math.max(...values);
  const bins = Math.min(30, Math.max(5, Math.ceil(Math.sqrt(values.length))));
  const width = Math.max(1e-9, (hi - lo) / bins);
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))]++;
  const top = Math.max(...counts);
  const bw = (W - L - R) / bins;
  counts.forEach((c, i) => {
    const h = (H - T - B) * c / top;
    el("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h,
      fill: "var(--queued)", "data-count": c }, svg);
  });
  el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
  el("text", { x: L, y: H - 8, class: "tick" }, svg).textContent = lo.toFixed(1) + " s";
  el("text", { x: W - R - 50, y: H - 8, class: "tick" }, svg).textContent =
    hi.toFixed(1) + " s";
  el("text", { x: 4, y: T + 10, class: "tick" }, svg).textContent = String(top);
}

async function refresh() {
  const since = new URLSearchParams(location.search).get("since");
  const query = since ? `?since=${encodeURIComponent(since)}` : "";
  try {
    const [report, timeline] = await Promise.all([
      fetch("/api/report" + query).then((r) => r.json()),
      fetch("/api/timeline" + query).then((r) => r.json()),
    ]);
    if (report.error) throw new Error(report.error);
    fillNumbers(report);
    drawTimeline(timeline);
    drawLatency(timeline);
    document.getElementById("status").textContent =
      "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "true";
  } catch (err) {
    document.getElementById("status").textContent = "error: " + err.message;
  }
}

refresh();
setInterval(refresh, 3000);
