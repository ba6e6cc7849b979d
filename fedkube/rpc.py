"""gRPC plumbing shared by every role: bearer-token auth, TLS, channels.

I/O module (grpc). Servers check `authorization: Bearer <token>` on every RPC:
each client has its own token (`fedkube.identity`), the reducer has one of its
own. TLS is optional on
every endpoint: a server with a cert/key serves TLS, and with a client CA it
also requires client certificates (mTLS).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedkube.errors import AuthError
from fedkube.vocabulary import MetadataKey

CLIENT_TOKEN_ENV = "FEDKUBE_CLIENT_TOKEN"
REDUCER_TOKEN_ENV = "FEDKUBE_REDUCER_TOKEN"

# Control messages are small; keep the ceiling low so a bug cannot push model
# bytes through gRPC by accident.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
    # Calls that arrived but that the server has not yet picked up. gRPC's defaults
    # (1,000, then calls dropped at random; 3,000, then all dropped) cancelled about
    # a third of a burst of 4,000 connects, as after a combiner restart, with a bare
    # CANCELLED. These let a burst of 20,000 wait its turn instead; beyond that,
    # clients retry with backoff (bench/scale.py measures it).
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
]


def read_token(env: str, token_file: str | None = None) -> str:
    """A token from a file (preferred) or an environment variable; AuthError if neither."""
    if token_file:
        try:
            tok = Path(token_file).read_text().strip()
        except OSError as exc:
            raise AuthError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not tok:
            raise AuthError(f"token file {token_file} is empty")
        return tok
    tok = os.environ.get(env, "").strip()
    if not tok:
        raise AuthError(f"no token: set {env} or pass --token-file")
    return tok


def bearer(token: str) -> tuple[tuple[str, str]]:
    return ((MetadataKey.AUTHORIZATION.value, f"Bearer {token}"),)


def bearer_token(metadata: Any) -> tuple[str | None, str]:
    """The bearer token of call metadata; returns (token, "") or (None, why-not)."""
    for key, value in metadata or ():
        if key == MetadataKey.AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, tok = text.partition(" ")
            if scheme.lower() != "bearer" or not tok.strip():
                return None, "malformed authorization header (want 'Bearer <token>')"
            return tok.strip(), ""
    return None, "missing token (authorization metadata)"


def token_ok(metadata: Any, expected: str) -> tuple[bool, str]:
    """Check the bearer token in call metadata against one shared secret (the
    reducer token); returns (ok, why-not). Clients are checked per client
    (`fedkube.identity`)."""
    tok, why = bearer_token(metadata)
    if tok is None:
        return False, why
    if hmac.compare_digest(tok.encode(), expected.encode()):
        return True, ""
    return False, "wrong token"


@dataclass(frozen=True)
class ServerTLS:
    cert: str
    key: str
    client_ca: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


@dataclass(frozen=True)
class ClientTLS:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes() if self.ca else None,
            private_key=Path(self.key).read_bytes() if self.key else None,
            certificate_chain=Path(self.cert).read_bytes() if self.cert else None,
        )


def _check_pem(path: str | None, flag: str) -> None:
    """Fail early (ValueError, a clean CLI error) on a missing or non-PEM TLS file,
    instead of a traceback when the server binds or the channel first connects."""
    if not path:
        return
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag} {path}: not a PEM file")


def server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTLS | None:
    if not cert and not key:
        if client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    _check_pem(cert, "--tls-cert")
    _check_pem(key, "--tls-key")
    _check_pem(client_ca, "--tls-client-ca")
    return ServerTLS(cert, key, client_ca)


def client_tls(
    ca: str | None,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
    *,
    force: bool = False,
) -> ClientTLS | None:
    """TLS settings of a channel; None (plaintext) unless a CA, a client certificate
    or `force` (TLS with the system's trusted CAs) is given."""
    if not (ca or cert or key or force):
        return None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    _check_pem(ca, "--tls-ca")
    _check_pem(cert, "--tls-cert")
    _check_pem(key, "--tls-key")
    return ClientTLS(ca, cert, key, server_name)


def check_address(address: str, flag: str = "--connect") -> str:
    """`address` when it is HOST:PORT with a port in 1..65535 (ValueError naming the
    flag otherwise): an empty port, say from a shell substitution that printed
    nothing, would make the client retry an unreachable address forever."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT with a port from 1 to 65535")
    return address.strip()


def open_channel(address: str, tls: ClientTLS | None = None) -> grpc.Channel:
    options = list(CHANNEL_OPTIONS)
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(address, tls.credentials(), options=options)


def open_aio_channel(address: str, tls: ClientTLS | None = None) -> grpc.aio.Channel:
    options = list(CHANNEL_OPTIONS)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, tls.credentials(), options=options)


def bind(server: grpc.aio.Server, address: str, tls: ServerTLS | None) -> int:
    """Listen on `address` (host:port, port 0 picks one); return the port."""
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port
