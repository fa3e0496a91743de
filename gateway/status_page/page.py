"""The status page's HTML: the one self-contained page ``GET /`` serves (cards, chart panels
with their legends, tables), with the assets inlined, and the Content-Security-Policy that lets
only those inline assets run and lets the page talk only to its own origin.
"""

from __future__ import annotations

import base64
import hashlib

from gateway.status_page.assets import SCRIPT, STYLE

_LEGEND_ERRORS = (
    '<div class="legend"><span><i class="s-gateway"></i>gateway-made</span>'
    '<span><i class="s-exact"></i>EXACT-made</span>'
    '<span><i class="s-closed"></i>499 (caller left)</span></div>'
)
_LEGEND_LATENCY = (
    '<div class="legend"><span><i class="s-p50"></i>p50</span>'
    '<span><i class="s-p99"></i>p99</span><span>per 10 s bucket</span></div>'
)

_LEGEND_RATE = (
    '<div class="legend"><span><i class="s-rate"></i>answers per second</span>'
    "<span>per 10 s bucket</span></div>"
)


def _chart(name: str, title: str, label: str, legend: str) -> str:
    """One chart panel: the script draws into the SVG; the legend names every line."""
    return (
        f'<div class="panel"><h2>{title}</h2>'
        f'<svg id="chart-{name}" viewBox="0 0 420 150" role="img" aria-label="{label}"></svg>'
        f'{legend}<small id="{name}-now"></small></div>\n'
    )


_CHARTS = (
    _chart("rate", "Requests per second", "requests per second, last 15 minutes", _LEGEND_RATE)
    + _chart(
        "errors", "5xx per second, by maker", "5xx per second by maker, last 15 min", _LEGEND_ERRORS
    )
    + _chart(
        "latency",
        "Latency (whole request)",
        "p50 and p99 latency, last 15 minutes",
        _LEGEND_LATENCY,
    )
)

_BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>exact-gateway status</title><style>{style}</style></head>
<body><header><h1>exact-gateway</h1><span id="version" class="dim">loading</span>
<span id="env" class="env">-</span><b id="ready">-</b><span id="inflight" class="dim"></span>
<span id="updated" class="dim"></span></header>
<main>
<section class="cards">
<div class="card"><h2>Access token</h2><b id="token">-</b>
<small id="token-note"></small><div class="bar"><i id="token-bar"></i></div></div>
<div class="card"><h2>EXACT API breaker</h2><b id="upstream">-</b>
<small id="upstream-note"></small></div>
<div class="card"><h2>Practices failing</h2><b id="practices">-</b>
<small id="practices-note"></small></div>
<div class="card"><h2>Request rate (1 min)</h2><b id="rate">-</b>
<small id="rate-note"></small></div>
<div class="card"><h2>5xx answers (1 min)</h2><b id="errors">-</b>
<small id="errors-note"></small></div>
<div class="card"><h2>Latency p99 (1 min)</h2><b id="latency">-</b>
<small id="latency-note"></small></div>
</section>
<section class="charts">
{charts}
</section>
<section class="tables">
<div class="panel"><h2>Practices failing now</h2>
<table><thead><tr><th>Practice</th><th>Breaker</th><th>Opened at</th><th>Open for</th>
<th>Next probe</th></tr></thead><tbody id="failing"></tbody></table>
<small id="failing-more"></small></div>
<div class="panel"><h2>EXACT API breaker: recent changes</h2>
<table><thead><tr><th>At</th><th>State</th><th>Why</th></tr></thead>
<tbody id="breaker-events"></tbody></table></div>
<div class="panel"><h2>Access token: recent fetches</h2>
<table><thead><tr><th>At</th><th>Result</th><th>Detail</th></tr></thead>
<tbody id="token-events"></tbody></table></div>
</section>
<section class="panel"><h2>Practices unavailable, slow or paused</h2>
<table><thead><tr><th>Practice</th><th>State</th><th>Since</th><th>Cause</th><th>EXACT</th>
<th>Last 24 h (hourly)</th></tr></thead><tbody id="troubled"></tbody></table>
<small id="troubled-more"></small></section>
</main><script>{script}</script></body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = _BODY.format(
    style=STYLE,
    script=SCRIPT,
    charts=_CHARTS,
).encode()
# Only this page's own inline style and script may run, and it may only talk to its origin.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)};"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
