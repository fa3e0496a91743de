"""Knowing each practice: its EXACT version, its subscription, its availability, its pauses.

The pure parts (:mod:`~gateway.practices.versions`, :mod:`~gateway.practices.subscriptions`,
and beside this package :mod:`gateway.ledger` and :mod:`gateway.pauses`) hold the facts;
:mod:`~gateway.practices.watch` is the I/O shell that learns them (the gateway's own calls to
EXACT, the pauses file) and answers the proxy's admission question. This module imports
nothing, so importing a pure part never pulls in aiohttp.
"""
