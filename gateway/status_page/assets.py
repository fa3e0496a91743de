"""The status page's assets: its stylesheet and its script, inlined into the page.

They are text, not files, so the page stays one self-contained response (no external assets)
whose Content-Security-Policy pins them by hash (:mod:`gateway.status_page.page`). The script
polls ``GET /status`` every 5 s and draws the cards, charts (inline SVG) and tables from it;
colours are the Okabe-Ito palette and every line also differs by dash pattern.
"""

from __future__ import annotations

STYLE = """
:root{--bg:#0f1419;--panel:#1a222c;--line:#2c3845;--text:#e8edf2;--dim:#9aa8b6;
--blue:#56b4e9;--orange:#e69f00;--green:#009e73;--verm:#d55e00;--purple:#cc79a7;--grey:#9aa8b6}
*{box-sizing:border-box}
body{font:14px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:0;background:var(--bg);
color:var(--text)}
header{background:#0a0e12;border-bottom:1px solid var(--line);padding:10px 20px;display:flex;
gap:18px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
.dim,small{color:var(--dim)}
.env{padding:1px 8px;border-radius:4px;border:1px solid var(--line);text-transform:uppercase;
font-size:12px;letter-spacing:.05em}
.env.sandbox{border-color:var(--orange);color:var(--orange)}
main{padding:14px 20px;display:grid;gap:14px}
.cards{display:grid;grid-template-columns:repeat(6,minmax(0,1fr));gap:10px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:9px 12px}
.card h2,.panel h2{font-size:12px;font-weight:normal;color:var(--dim);margin:0;
text-transform:uppercase;letter-spacing:.06em}
.card b{display:block;font-size:21px;margin:2px 0;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.card small{display:block}
.bar{height:4px;background:var(--line);border-radius:2px;margin-top:4px}
.bar i{display:block;height:4px;border-radius:2px;background:var(--blue);width:0}
.ok{color:var(--green)}.bad{color:var(--verm)}.warn{color:var(--orange)}
.charts,.tables{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:10px}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:9px 12px;
overflow:hidden}

svg{width:100%;height:auto;display:block;margin-top:4px}
svg text{fill:var(--dim);font-size:11px}
svg .grid{stroke:var(--line);stroke-width:1}svg .off{fill:#ffffff08}
svg path{fill:none;stroke-width:2;stroke-linejoin:round}
svg .s-rate{stroke:var(--blue)}svg .s-area{fill:#56b4e922;stroke:none}
svg .s-gateway{stroke:var(--orange)}svg .s-exact{stroke:var(--blue);stroke-dasharray:6 3}
svg .s-closed{stroke:var(--grey);stroke-dasharray:2 3}
svg .s-p50{stroke:var(--blue)}svg .s-p99{stroke:var(--orange);stroke-dasharray:6 3}
svg circle.s-rate,svg circle.s-p50,svg circle.s-exact{fill:var(--blue);stroke:none}
svg circle.s-gateway,svg circle.s-p99{fill:var(--orange);stroke:none}
svg circle.s-closed{fill:var(--grey);stroke:none}
.legend{display:flex;gap:12px;font-size:12px;color:var(--dim);margin-top:2px}
.legend span{white-space:nowrap}
.legend i{display:inline-block;width:18px;height:0;border-top:2px solid;vertical-align:middle;
margin-right:5px}
.legend .s-gateway,.legend .s-p99{border-color:var(--orange)}
.legend .s-exact,.legend .s-p50,.legend .s-rate{border-color:var(--blue)}
.legend .s-exact,.legend .s-p99{border-top-style:dashed}
.legend .s-closed{border-color:var(--grey);border-top-style:dotted}
table{border-collapse:collapse;width:100%;margin-top:4px}
th,td{text-align:left;padding:4px 6px;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-weight:normal;color:var(--dim);font-size:12px}
td:last-child{white-space:normal}td.empty{color:var(--dim)}
svg.strip{width:146px;height:12px;margin:0;display:inline-block;vertical-align:middle}
svg.strip rect.h-ok{fill:var(--green)}svg.strip rect.h-down{fill:var(--verm)}
svg.strip rect.h-mixed{fill:var(--orange)}svg.strip rect.h-none{fill:var(--line)}
""".strip()

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let last = null, fetchedAt = 0;

function set(id, text, cls) { const e = $(id); e.textContent = text; e.className = cls || ""; }
function dur(s) {
  // No-break spaces: a duration never wraps in the middle of a table cell.
  if (s === null || s === undefined) return "-";
  if (s < 10 && s > 0 && s !== Math.round(s)) return s.toFixed(1) + "\u00a0s";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "\u00a0s";
  if (s < 3600) return Math.floor(s / 60) + "\u00a0min " + (s % 60) + "\u00a0s";
  return Math.floor(s / 3600) + "\u00a0h " + Math.floor((s % 3600) / 60) + "\u00a0min";
}
function hhmm(unix, seconds) {
  const o = {hour: "2-digit", minute: "2-digit", hour12: false};
  if (seconds) o.second = "2-digit";
  return new Date(unix * 1000).toLocaleTimeString("en-GB", o);
}
function rate(v) {
  return v === 0 ? "0" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function perSecond(v) { return rate(v) + " /s"; }
function ms(v) {
  if (v === null || v === undefined) return "-";
  if (v === 0) return "0 ms";
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v >= 10 ? v.toFixed(0) + " ms" :
    v.toFixed(1) + " ms";
}
function nice(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v * 1.05) return m * p;
  return 10 * p;
}
function node(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function per(series, key) {
  return series[key].map((v, i) => v === null ? null : v / series.seconds[i]);
}

function chart(id, lines, label, t) {
  const W = 420, H = 150, L = 50, R = 8, T = 8, B = 20;
  const svg = $(id);
  svg.replaceChildren();
  let max = 0;
  for (const s of lines) for (const v of s.values) if (v !== null && v > max) max = v;
  const top = nice(max), n = lines[0].values.length;
  const x = (i) => L + (W - L - R) * i / (n - 1);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (const f of [0, 0.5, 1]) {
    const at = y(top * f);
    svg.appendChild(node("line", {class: "grid", x1: L, x2: W - R, y1: at, y2: at}));
    svg.appendChild(node("text", {x: L - 5, y: y(top * f) + 4, "text-anchor": "end"},
      label(top * f)));
  }
  for (const i of [0, 30, 60, n - 1]) {
    const at = t.start_unix + i * t.bucket_seconds;
    svg.appendChild(node("text", {x: x(i), y: H - 4,
      "text-anchor": i === 0 ? "start" : i === n - 1 ? "end" : "middle"},
      i === n - 1 ? "now " + hhmm(t.now_unix) : hhmm(at)));
  }
  // Before the process started there is no data, not zero traffic: say so on the chart.
  const live = lines[0].values.findIndex((v) => v !== null);
  if (live > 0) {
    const off = {class: "off", x: L, y: T, width: x(live) - L, height: H - T - B};
    svg.appendChild(node("rect", off));
    if (x(live) - L > 110) {
      svg.appendChild(node("text", {x: (L + x(live)) / 2, y: T + (H - T - B) / 2 + 4,
        "text-anchor": "middle"}, "gateway not running"));
    }
  }
  for (const s of lines) {
    let d = "", pen = false, points = 0;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
      pen = true; points += 1;
      const alone = (i === 0 || s.values[i - 1] === null) &&
        (i === n - 1 || s.values[i + 1] === null);
      if (alone || i === n - 1) {
        svg.appendChild(node("circle", {class: s.cls, cx: x(i), cy: y(v), r: 2.5}));
      }
    });
    if (s.area && d) {
      const first = s.values.findIndex((v) => v !== null);
      svg.appendChild(node("path", {class: "s-area",
        d: d + "L" + x(n - 1) + " " + y(0) + "L" + x(first) + " " + y(0) + "Z"}));
    }
    svg.appendChild(node("path", {class: s.cls, d: d, "data-points": points}));
  }
}

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
}
function empty(tbody, columns, text) {
  const tr = document.createElement("tr"), td = document.createElement("td");
  td.colSpan = columns; td.className = "empty"; td.textContent = text;
  tr.appendChild(td); tbody.appendChild(tr);
}
const PRACTICE = {unavailable: ["\u2715 unavailable", "bad"], slow: ["\u25d4 slow", "warn"],
  paused: ["\u23f8 paused", "warn"]};
const HOUR = {ok: "\u2713 answered", down: "\u2715 failing", mixed: "\u25d0 both",
  none: "no request"};
const STATE = {open: ["\u2715 open", "bad"], half_open: ["\u25d0 half-open", "warn"],
  closed: ["\u2713 closed", "ok"]};

function tick() {
  if (!last) return;
  const t = last.token, gone = (performance.now() - fetchedAt) / 1000;
  if (t.expires_in_seconds === null || t.expires_in_seconds === undefined) {
    set("token", t.last_error ? "\u2715 none" : "none yet", "bad");
    set("token-note", t.last_error || "not fetched yet");
    $("token-bar").style.width = "0";
    return;
  }
  const left = Math.max(0, t.expires_in_seconds - gone);
  const usable = Math.max(0, t.usable_for_seconds - gone);
  set("token", (usable > 0 ? "\u2713 " : "\u2715 ") + dur(left), usable > 0 ? "ok" : "bad");
  set("token-note", usable > 0 ?
    "left \u00b7 refresh in " + dur(Math.max(0, t.next_refresh_in_seconds - gone)) :
    "not usable: " + (t.last_error || "refresh failing"));
  const life = t.age_seconds + t.expires_in_seconds;
  $("token-bar").style.width = (life > 0 ? 100 * left / life : 0).toFixed(1) + "%";
}

function render(s) {
  set("version", "v" + s.version);
  set("env", s.environment, "env " + s.environment);
  set("ready", s.ready ? "\u2713 ready" : s.draining ? "\u2715 draining" : "\u2715 not ready",
    s.ready ? "ok" : "bad");
  set("inflight", s.inflight + " in flight");
  const tr = s.traffic, r = tr.recent;
  set("rate", rate(r.requests / Math.max(r.seconds, 1)) + " /s");
  set("rate-note", r.requests + " requests in " + dur(r.seconds));
  const errs = r.gateway_errors + r.exact_errors;
  const share = (100 * errs / Math.max(1, r.requests)).toFixed(1) + " %";
  set("errors", errs ? "\u2715 " + errs + " \u00b7 " + share : "\u2713 none", errs ? "bad" : "ok");
  set("errors-note", "gateway " + r.gateway_errors + " \u00b7 EXACT " +
    r.exact_errors + " \u00b7 499: " + r.client_closed);
  set("latency", ms(r.p99_ms), "");
  set("latency-note", "p50 " + ms(r.p50_ms));
  const u = s.breakers.upstream;
  const [ut, uc] = STATE[u.state] || [u.state, "warn"];
  set("upstream", ut, uc);
  set("upstream-note", u.state === "closed" ? "EXACT is answering" :
    "cause: " + (u.cause || "-") + " \u00b7 probe in " + dur(u.next_probe_in_seconds));
  const c = s.breakers.counts;
  set("practices", c.open + c.half_open ? "\u2715 " + (c.open + c.half_open) + " failing" :
    "\u2713 none",
    c.open + c.half_open ? "bad" : "ok");
  set("practices-note", c.open + " open \u00b7 " + c.half_open + " half-open \u00b7 " +
    c.closed + " closed");

  const q = tr.series, w = tr.window;
  chart("chart-rate", [{values: per(q, "requests"), cls: "s-rate", area: true}], perSecond, tr);
  set("rate-now", "15 min: " + w.requests + " requests");
  chart("chart-errors", [
    {values: per(q, "gateway_errors"), cls: "s-gateway"},
    {values: per(q, "exact_errors"), cls: "s-exact"},
    {values: per(q, "client_closed"), cls: "s-closed"}], perSecond, tr);
  set("errors-now", "15 min: gateway " + w.gateway_errors + " \u00b7 EXACT " + w.exact_errors +
    " \u00b7 499: " + w.client_closed);
  chart("chart-latency", [{values: q.p50_ms, cls: "s-p50"}, {values: q.p99_ms, cls: "s-p99"}],
    ms, tr);
  set("latency-now", "15 min: p50 " + ms(w.p50_ms) + " \u00b7 p99 " + ms(w.p99_ms));

  const failing = $("failing");
  failing.replaceChildren();
  for (const b of s.breakers.practices) {
    const [st, sc] = STATE[b.state] || [b.state, "warn"];
    row(failing, [[b.practice_id], [st, sc],
      [b.opened_at_unix ? hhmm(b.opened_at_unix, true) : "-"],
      [b.opened_at_unix ? dur(s.traffic.now_unix - b.opened_at_unix) : "-"],
      [dur(b.next_probe_in_seconds)]]);
  }
  if (!s.breakers.practices.length) empty(failing, 5, "\u2713 every practice breaker is closed");
  set("failing-more", s.breakers.practices_not_shown ?
    "and " + s.breakers.practices_not_shown + " more" : "");

  const events = $("breaker-events");
  events.replaceChildren();
  for (const e of u.events) {
    const [st, sc] = STATE[e.state] || [e.state, "warn"];
    row(events, [[hhmm(e.at_unix, true)], [st, sc], [e.state === "open" ?
      (e.cause || "-") + ", for " + dur(e.open_for_seconds) : e.state === "half_open" ?
      "one probe let through" : "EXACT answering again"]]);
  }
  if (!u.events.length) empty(events, 3, "\u2713 no change since start: closed");

  // Practices unavailable, slow or paused, from the availability ledger, each with a strip
  // of its last 24 hours (one cell an hour, oldest first).
  const troubled = $("troubled"), tp = s.practices;
  troubled.replaceChildren();
  for (const p of tp.rows) {
    const [st, sc] = PRACTICE[p.state] || [p.state, "warn"];
    const cause = p.pause ? "paused: " + (p.pause.note || "-") : (p.cause || "-");
    row(troubled, [[p.practice_id], [st, sc], [hhmm(Date.parse(p.since) / 1000, true)],
      [cause], [p.pms_version || "-"]]);
    const strip = node("svg", {class: "strip", viewBox: "0 0 146 12",
      "data-hours": p.hours.length, role: "img", "aria-label": "last 24 hours"});
    p.hours.forEach((mark, i) => {
      const cell = node("rect", {class: "h-" + mark, x: i * 6 + 1, y: 1, width: 5, height: 10});
      cell.appendChild(node("title", {}, HOUR[mark] || mark));
      strip.appendChild(cell);
    });
    const td = document.createElement("td");
    td.appendChild(strip);
    troubled.lastChild.appendChild(td);
  }
  if (!tp.rows.length) empty(troubled, 6, "\u2713 every practice seen is answering");
  set("troubled-more", tp.not_shown ? "and " + tp.not_shown + " more" : "");

  const tokens = $("token-events");
  tokens.replaceChildren();
  for (const e of s.token.events) {
    const ok = e.result === "success";
    row(tokens, [[hhmm(e.at_unix, true)], [ok ? "\u2713 new token" : e.result ===
      "rejected_by_exact" ? "\u2715 EXACT refused it" : "\u2715 failed", ok ? "ok" : "bad"],
      [ok ? "lives " + dur(e.lifetime_seconds) : e.result]]);
  }
  if (!s.token.events.length) empty(tokens, 3, "no token fetched yet");
  tick();
}

async function refresh() {
  try {
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    last = await response.json();
    fetchedAt = performance.now();
    render(last);
    set("updated", "updated " + hhmm(Date.now() / 1000, true), "dim");
  } catch (e) {
    set("updated", "\u2715 cannot reach the gateway: " + e.message, "bad");
  }
}
refresh();
setInterval(refresh, 5000);
setInterval(tick, 1000);
""".strip()
