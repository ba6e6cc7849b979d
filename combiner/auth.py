"""Who is calling: client credentials from the state store, and cheap refusals.

`ClientAuth` maps the bearer token of a client's call to the client it was
issued to (`fedkube.identity`), from a snapshot of the job's credentials that
it reloads every few seconds (and at most once a second on an unknown token,
so a flood of made-up tokens costs no state-store traffic beyond that).

`RefusalLog` merges refused calls into counted events: the first refusal of a
kind from a peer is logged and recorded at once; the rest in the same
interval become one "N more" event, so a flood writes a handful of events, not
one per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fedkube.identity import Credential, Credentials, looks_like_token
from fedkube.rpc import bearer_token

#: seconds between reloads of the job's credentials (revocations take effect within this)
REFRESH_SECONDS = 5.0
#: an unknown token reloads the credentials at most this often
MISS_REFRESH_SECONDS = 1.0
#: refused calls are merged per (peer, kind) over this many seconds
REFUSAL_INTERVAL_SECONDS = 30.0
#: distinct (peer, kind) keys kept per interval; further peers are merged into one
MAX_REFUSAL_KEYS = 256


class ClientAuth:
    """The job's live client credentials, reloaded through `load`.

    An unknown token waits for the next reload that starts after the call came
    in (so a credential issued a moment ago is found), and reloads start at
    most once per `miss_refresh_seconds`, however many unknown tokens arrive.
    """

    def __init__(
        self,
        load: Callable[[], Awaitable[Credentials | None]],
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        miss_refresh_seconds: float = MISS_REFRESH_SECONDS,
    ) -> None:
        self._load = load
        self.refresh_seconds = refresh_seconds
        self.miss_refresh_seconds = miss_refresh_seconds
        self.credentials = Credentials()
        self.loaded_from = float("-inf")  # when the snapshot's load started
        self._last_start = float("-inf")
        self._inflight: asyncio.Future[None] | None = None

    async def refresh(self) -> None:
        """Reload the credentials now (joining a reload that is running)."""
        await self._reload_after(time.monotonic())

    async def _reload_after(self, t: float) -> None:
        """Return once the snapshot comes from a load that started at or after `t`.
        A failed load keeps the previous snapshot (and returns all the same)."""
        while self.loaded_from < t:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._reload())
            await asyncio.shield(self._inflight)
            if self._last_start >= t:  # this load started after the call: done, even if it failed
                return

    async def _reload(self) -> None:
        wait = self._last_start + self.miss_refresh_seconds - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        start = self._last_start = time.monotonic()
        creds = await self._load()
        if creds is not None:
            self.credentials = creds
            self.loaded_from = start

    async def identify(self, metadata: Any) -> tuple[Credential | None, str]:
        """The credential a call's token proves, or (None, why-not)."""
        token, why = bearer_token(metadata)
        if token is None:
            return None, why
        if not looks_like_token(token):
            return None, "not a client token"
        cred = self.credentials.identify(token)
        if cred is None:
            await self._reload_after(time.monotonic())  # issued a moment ago?
            cred = self.credentials.identify(token)
        if cred is None:
            return None, "unknown or revoked client token"
        return cred, ""


@dataclass
class _Count:
    first_at: float
    count: int = 0
    sample: str = ""


@dataclass
class RefusalLog:
    """Counts refused calls per (peer host, kind of refusal) and decides what to record.

    `note` returns True for the first refusal of a key in an interval (record it
    now); `due` returns the merged counts of intervals that ended, as
    ``(peer, kind, count, sample message)``, for one summary event each.
    """

    interval: float = REFUSAL_INTERVAL_SECONDS
    max_keys: int = MAX_REFUSAL_KEYS
    _counts: dict[tuple[str, str], _Count] = field(default_factory=dict)

    def note(self, peer: str, kind: str, message: str, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        key = (peer, kind)
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = ("(other peers)", kind)
        entry = self._counts.get(key)
        if entry is None:
            self._counts[key] = _Count(first_at=t)
            return True
        entry.count += 1
        entry.sample = message
        return False

    def due(self, now: float | None = None) -> list[tuple[str, str, int, str]]:
        t = time.monotonic() if now is None else now
        out = []
        for key, entry in list(self._counts.items()):
            if t - entry.first_at >= self.interval:
                del self._counts[key]
                if entry.count:
                    out.append((key[0], key[1], entry.count, entry.sample))
        return out


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (``ipv4:127.0.0.1:5555`` -> ``127.0.0.1``):
    one client's calls come from many ports."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
