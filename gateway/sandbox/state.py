"""Everything one sandbox instance remembers, in one object held by its aiohttp app.

Nothing lives at module level, so two sandboxes in one process (two tests, or a test and a
demo) never share practices, tokens or messages. `reset()` returns the instance to its
starting point without changing its signing key, so tokens already issued stay valid (and
revoked ones stay revoked).
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.sandbox.client_auth import IdentityControl
from gateway.sandbox.clients import BUILTIN_CLIENTS, Client
from gateway.sandbox.config import SandboxConfig
from gateway.sandbox.dataset import Appointment, PracticeData, PracticeRecords
from gateway.sandbox.paging import ContinuationCodec
from gateway.sandbox.practices import Practice, default_practices
from gateway.sandbox.token_issuer import TokenAuthority

# Generated practices are kept for reuse but bounded: a load test may touch thousands of
# practice ids, and each generated practice costs a couple of megabytes. Evicted ones are
# rebuilt identically from their seed; edits survive eviction in `_patches`.
DATA_CACHE_SIZE = 32


class DataStore:
    """Generated practice data, built on demand, with edits that outlive cache eviction."""

    def __init__(self, seed: int, capacity: int = DATA_CACHE_SIZE) -> None:
        self._seed = seed
        self._capacity = capacity
        self._cache: dict[str, PracticeData] = {}
        self._patches: dict[str, dict[str, dict[str, Any]]] = {}

    def practice(self, practice_id: str) -> PracticeData:
        """The data of `practice_id` (cached; least recently used is evicted first)."""
        key = practice_id.upper()
        data = self._cache.pop(key, None)
        if data is None:
            data = PracticeData(practice_id, self._seed, self._patches.setdefault(key, {}))
            if len(self._cache) >= self._capacity:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = data  # re-inserting marks it most recently used
        return data

    def records(self, practice_id: str) -> PracticeRecords:
        """Patients and appointments of a practice, with every saved edit applied."""
        return self.practice(practice_id).records

    def save_appointment(self, practice_id: str, record: dict[str, Any]) -> Appointment:
        """Persist an edited appointment for the life of the sandbox."""
        records = self.records(practice_id)
        self._patches.setdefault(practice_id.upper(), {})[str(record["id"]).lower()] = record
        return records.replace_appointment(record)

    def clear(self) -> None:
        """Forget every edit and every generated practice."""
        self._cache.clear()
        self._patches.clear()


@dataclass(slots=True)
class SandboxState:
    """The whole mutable state of one sandbox."""

    config: SandboxConfig
    signing_key: bytes
    tokens: TokenAuthority
    continuation: ContinuationCodec
    clients: dict[str, Client]
    identity: IdentityControl
    practices: dict[str, Practice]
    data: DataStore
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    flaky_rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def create(cls, config: SandboxConfig) -> SandboxState:
        """A fresh state for `config`; a random key unless the config fixes one."""
        key = config.signing_key or secrets.token_bytes(32)
        return cls(
            config=config,
            signing_key=key,
            tokens=TokenAuthority(key, config.clock),
            continuation=ContinuationCodec(key),
            clients={c.client_id: c for c in BUILTIN_CLIENTS},
            identity=IdentityControl(default_latency_s=config.slow_latency_s),
            practices=default_practices(config),
            data=DataStore(config.seed),
            flaky_rng=random.Random(config.seed),
        )

    def reset(self) -> None:
        """Back to the starting practices and identity settings; counts, logs, edits cleared."""
        self.identity = IdentityControl(default_latency_s=self.config.slow_latency_s)
        self.practices = default_practices(self.config)
        self.data.clear()
        self.messages.clear()
        self.flaky_rng.seed(self.config.seed)

    @property
    def token_lifetime_s(self) -> int:
        """The lifetime given to new tokens: the identity override, else the config's."""
        return self.identity.token_lifetime_s or self.config.token_lifetime_s


SANDBOX_STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)
