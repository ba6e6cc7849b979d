"""Client identity: per-client bearer tokens, proven by their digest. Pure module.

A client's id is proven, not declared. ``fedkube clients issue JOB CLIENT``
(and `fedkube run`, for its simulated clients) makes a random token for one
client of one job and records only its sha256 digest, with the client id, in
the state store (`fedkube.state.CredentialRecord`). A combiner maps the token
a call presents to the client it was issued to (`Credentials.identify`) and
refuses any call whose ``client_id`` is another one. Revoking a credential
removes it from the combiners' view within their refresh interval and drops
that client's stream; nobody else is disturbed.

Why digests and not signed tokens: nothing that could mint a token lives in
a combiner or the state store (a leaked state store leaks no usable token),
listing and revoking are plain queries, and an operator needs no key rotation.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

#: every client token starts with this, so a leaked one is recognisable (secret scanners)
TOKEN_PREFIX: Final = "fkc_"
#: random bytes in a token (256 bits)
TOKEN_BYTES: Final = 32
#: characters of the digest that name a credential (``fedkube clients list``)
TOKEN_ID_LENGTH: Final = 12
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}[A-Za-z0-9_-]{{40,64}}$")
#: what a client id may be: printable, no whitespace, at most 128 characters
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def check_client_id(client_id: str) -> str:
    """`client_id` if it is a valid client id, else ValueError saying why."""
    if not CLIENT_ID_RE.fullmatch(client_id):
        raise ValueError(
            f"client id {client_id!r} is not valid: 1-128 characters, letters, digits "
            "and . _ : @ -, starting with a letter or digit"
        )
    return client_id


def new_token() -> str:
    """A fresh client token (shown once, never stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def looks_like_token(token: str) -> bool:
    """True if `token` has the form of a client token (cheap, before any lookup)."""
    return bool(_TOKEN_RE.fullmatch(token))


def token_digest(token: str) -> str:
    """The sha256 hex digest under which a token is recorded."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(digest: str) -> str:
    """The short name of a credential: the first characters of its digest."""
    return digest[:TOKEN_ID_LENGTH]


class CredentialLike(Protocol):
    """What `Credentials.from_records` reads (`fedkube.state.CredentialRecord`)."""

    client: str
    token_id: str
    digest: str
    revoked_at: float | None


@dataclass(frozen=True)
class Credential:
    """One live (issued, not revoked) credential as a combiner sees it."""

    client: str
    token_id: str
    digest: str


class Credentials:
    """The live credentials of one job: digest -> client.

    Built from the state store's records (`from_records`); a lookup is one
    dictionary read by the token's digest.
    """

    def __init__(self, live: Iterable[Credential] = ()) -> None:
        self._by_digest = {c.digest: c for c in live}

    @classmethod
    def from_records(cls, records: Iterable[CredentialLike]) -> Credentials:
        """From the state store's records; revoked ones are left out."""
        return cls(
            Credential(r.client, r.token_id, r.digest) for r in records if r.revoked_at is None
        )

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, token: str) -> Credential | None:
        """The credential `token` proves, or None."""
        return self._by_digest.get(token_digest(token))

    def is_live(self, digest: str) -> bool:
        return digest in self._by_digest
