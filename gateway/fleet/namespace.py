"""Who a gateway is in its fleet: the identity its shared state is filed under.

Every replica of one partner's gateway in one EXACT environment shares breaker verdicts,
replica counts and idempotency records, and reads back its own state file after a restart.
Another partner, or the same partner's QA gateway, must never see or trust that state: a
practice offline in QA says nothing about production, and another partner's idempotency keys
are none of ours. So everything is filed under a *gateway identity* made of the environment
and a hash of the client id. The client id itself is never written (it names the partner,
and it is half of the credentials); a truncated SHA-256 is enough to keep partners apart and
says nothing useful to a reader of the file or of Redis.

Each running process also gets a *replica id*: random, fresh at every start, so a replica
can recognise (and ignore) its own messages on a shared channel.
"""

from __future__ import annotations

import hashlib
import re
import secrets

# The environment is one of a fixed vocabulary; the hash is hex. Checked so that a foreign
# identity read from a file or from Redis can be compared and quoted in a log line safely.
IDENTITY = re.compile(r"[a-z]{1,16}:[0-9a-f]{16}")
REPLICA_ID = re.compile(r"[0-9a-f]{16}")


def gateway_identity(environment: str, client_id: str | None) -> str:
    """``<environment>:<16 hex digits of SHA-256(client id)>``: the same for every replica
    of one partner in one environment, different for anyone else."""
    digest = hashlib.sha256(f"exact-gateway/{client_id or ''}".encode()).hexdigest()
    return f"{environment.lower()}:{digest[:16]}"


def new_replica_id() -> str:
    """A fresh random id for this process (64 bits: collisions in a fleet are negligible)."""
    return secrets.token_hex(8)


def redis_prefix(identity: str) -> str:
    """The prefix of every Redis key and channel of this gateway's fleet. Braces make it a
    Redis Cluster hash tag, so one fleet's keys share a slot (multi-key commands work)."""
    return f"exact-gateway:{{{identity}}}"
