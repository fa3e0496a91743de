"""The partner's client credentials: who the gateway is to EXACT's identity server.

Pure (no aiohttp, no settings import): built once from the settings by the composition root.
The secret is read from its file at each token request, so a rotated Kubernetes Secret is
used without a restart; it never appears in ``repr``, logs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from gateway.errors import ConfigError


def basic_credentials(client_id: str, secret: str) -> str:
    """``Basic base64(client_id:client_secret)``, exactly as EXACT's documentation builds it."""
    raw = f"{client_id}:{secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class TokenConfig:
    client_id: str
    client_secret: SecretStr | None
    client_secret_file: Path | None
    scopes: tuple[str, ...]
    authority_url: str
    token_url: str | None
    timeout: float

    async def read_secret(self) -> str:
        """The current secret. The file is read at each fetch, so a rotated Secret is used."""
        if self.client_secret_file is not None:
            try:
                text = await asyncio.to_thread(self.client_secret_file.read_text, "utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"EXACT_GATEWAY_CLIENT_SECRET_FILE: cannot read the file ({exc.strerror})"
                ) from None
            secret = text.strip()
            if not secret:
                raise ConfigError("EXACT_GATEWAY_CLIENT_SECRET_FILE: the file is empty")
            return secret
        if self.client_secret is None:
            raise ConfigError("EXACT_GATEWAY_CLIENT_SECRET: not set")
        return self.client_secret.get_secret_value()

    def secret_file_stamp(self) -> tuple[int, int, int] | None:
        """What changes when the secret file is replaced (Kubernetes swaps a symlink)."""
        if self.client_secret_file is None:
            return None
        try:
            stat = os.stat(self.client_secret_file)
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
