"""Beyond one replica: the parts that let several gateways act as one fleet.

Each module is self-contained, with a narrow interface (small dataclasses and callbacks), so
the gateway's core can wire them in without these parts knowing its internals:

* :mod:`gateway.fleet.namespace`: the gateway identity (environment and a hash of the client
  id) that files the state of one partner's fleet apart from any other.
* :mod:`gateway.fleet.snapshot` and :mod:`gateway.fleet.ledger_state`: a state file written
  at drain and every few seconds, read back at start (breakers and the availability ledger).
* :mod:`gateway.fleet.redis_url` and :mod:`gateway.fleet.redis_link`: the optional Redis
  link, which is never in the way (short time-outs, local fallback, reconnects by itself).
* :mod:`gateway.fleet.verdicts`: "practice X unavailable until T" shared between replicas.
* :mod:`gateway.fleet.replicas`: heartbeats, the live replica count and each one's share of
  a limit.
* :mod:`gateway.fleet.idempotency_records`: ``Idempotency-Key`` records shared between
  replicas (a fingerprint, a state and a status; never a body).
"""
