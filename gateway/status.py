"""The status page on the admin port: what an on-call engineer wants at a glance.

``GET /`` is one self-contained HTML page (inline style and script, pinned by hashes in its
Content-Security-Policy, no external assets) that polls ``GET /status`` every few seconds and
shows the version, environment, readiness, the token, open breakers and recent rates. Nothing
on it is secret: no token, no secret, no path or query string, and practice ids only for
breakers that are not closed, as in the metrics.

:class:`RecentRates` counts what callers saw over the last minute in one-second slices
(constant memory, clock injected) so the page can show rates without a Prometheus server.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any

WINDOW_SECONDS = 60


class RecentRates:
    """Answers, server errors and gateway-made errors over the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._second = [-1] * WINDOW_SECONDS
        self._answers = [0] * WINDOW_SECONDS
        self._server_errors = [0] * WINDOW_SECONDS
        self._gateway_errors = [0] * WINDOW_SECONDS

    def record(self, status: int, gateway_error: bool) -> None:
        second = int(self._clock())
        slot = second % WINDOW_SECONDS
        if self._second[slot] != second:
            self._second[slot] = second
            self._answers[slot] = self._server_errors[slot] = self._gateway_errors[slot] = 0
        self._answers[slot] += 1
        self._server_errors[slot] += status >= 500
        self._gateway_errors[slot] += gateway_error

    def summary(self) -> dict[str, float]:
        oldest = int(self._clock()) - WINDOW_SECONDS
        answers = server = gateway = 0
        for second, a, s, g in zip(
            self._second, self._answers, self._server_errors, self._gateway_errors, strict=True
        ):
            if second > oldest:
                answers, server, gateway = answers + a, server + s, gateway + g
        return {
            "window_seconds": WINDOW_SECONDS,
            "requests_per_second": round(answers / WINDOW_SECONDS, 3),
            "server_error_ratio": round(server / answers, 4) if answers else 0.0,
            "gateway_errors_per_second": round(gateway / WINDOW_SECONDS, 3),
        }


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#1d2733;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{opacity:.8}
main{padding:16px 20px;display:grid;gap:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.card{background:#fff;border-radius:6px;padding:12px 14px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:22px;margin-top:4px}
.ok{color:#1a7f37}.bad{color:#c62828}.warn{color:#b26a00}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:6px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e7eb}
small{color:#5b6876}
""".strip()

_SCRIPT = """
const $ = (id) => document.getElementById(id);
function set(id, text, cls) { const e = $(id); e.textContent = text; e.className = cls || ""; }
function secs(v) { return v === null || v === undefined ? "-" : Math.round(v) + " s"; }
async function refresh() {
  try {
    const r = await fetch("status", {cache: "no-store"});
    const s = await r.json();
    set("version", "v" + s.version + " \\u00b7 " + s.environment);
    set("ready", s.ready ? "ready" : (s.draining ? "draining" : "not ready"),
        s.ready ? "ok" : "bad");
    const t = s.token;
    set("token", t.usable ? "valid, " + secs(t.expires_in_seconds) + " left" :
        "none: " + (t.last_error || "not fetched yet"), t.usable ? "ok" : "bad");
    set("rate", s.rates.requests_per_second.toFixed(2) + " /s");
    const ratio = s.rates.server_error_ratio * 100;
    set("errors", ratio.toFixed(1) + " %", ratio > 5 ? "bad" : (ratio > 0 ? "warn" : "ok"));
    set("inflight", String(s.inflight));
    set("upstream", s.breakers.upstream, s.breakers.upstream === "closed" ? "ok" : "bad");
    const rows = $("breakers");
    rows.replaceChildren();
    for (const b of s.breakers.practices) {
      const tr = document.createElement("tr");
      for (const v of [b.practice_id, b.state, secs(b.next_probe_in_seconds)]) {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    set("closed", s.breakers.counts.closed + " closed, " + s.breakers.counts.open + " open, " +
        s.breakers.counts.half_open + " half-open");
    set("updated", "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    set("updated", "cannot reach the gateway: " + e, "bad");
  }
}
refresh();
setInterval(refresh, 5000);
""".strip()

_BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>exact-gateway status</title><style>{style}</style></head>
<body><header><h1>exact-gateway</h1><span id="version">loading</span>
<span id="updated"></span></header>
<main>
<section class="cards">
<div class="card">Readiness<b id="ready">-</b></div>
<div class="card">Access token<b id="token">-</b></div>
<div class="card">Requests (last minute)<b id="rate">-</b></div>
<div class="card">Server errors<b id="errors">-</b></div>
<div class="card">In flight<b id="inflight">-</b></div>
<div class="card">EXACT API breaker<b id="upstream">-</b></div>
</section>
<section><h2>Practice breakers not closed</h2>
<table><thead><tr><th>Practice</th><th>State</th><th>Next probe</th></tr></thead>
<tbody id="breakers"></tbody></table><small id="closed"></small></section>
</main><script>{script}</script></body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = _BODY.format(style=_STYLE, script=_SCRIPT).encode()
# Only this page's own inline style and script may run, and it may only talk to its origin.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)};"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def status_document(
    *,
    version: str,
    environment: str,
    ready: bool,
    draining: bool,
    token: dict[str, Any],
    breakers: dict[str, Any],
    rates: dict[str, float],
    inflight: int,
) -> dict[str, Any]:
    """What ``GET /status`` answers: a safe subset of /token, /breakers and the rates."""
    return {
        "version": version,
        "environment": environment,
        "ready": ready,
        "draining": draining,
        "token": {
            key: token.get(key)
            for key in (
                "usable",
                "expires_in_seconds",
                "next_refresh_in_seconds",
                "refresh_count",
                "last_error",
            )
        },
        "breakers": {
            "upstream": breakers["upstream"]["state"],
            "practices": [
                {
                    "practice_id": entry["practice_id"],
                    "state": entry["state"],
                    "next_probe_in_seconds": entry.get("next_probe_in_seconds"),
                }
                for entry in breakers["practices"]
            ],
            "counts": breakers["counts"],
        },
        "rates": rates,
        "inflight": inflight,
    }
