"""Throwaway TLS material for tests: a CA, a server cert and client certs (openssl CLI).

`make_certs(dir)` writes, under `dir`:
  ca.pem / ca.key                  the test CA
  server.pem / server.key          CN=localhost, SAN DNS:localhost + IP:127.0.0.1 (or the
                                   names given), serverAuth
  client.pem / client.key          CN=fedkube-test-client, clientAuth, signed by the CA
  rogue-ca.pem, rogue-client.pem/.key   a second, untrusted CA and a client cert it signed

Keys are EC P-256 (fast to make). Everything comes from the `openssl` command with
config files written here, so the host's openssl.cnf plays no part. Tests call
`make_certs` from a session-scoped fixture:

    @pytest.fixture(scope="session")
    def certs(tmp_path_factory):
        return make_certs(tmp_path_factory.mktemp("certs"))
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

DAYS = 2

# One config for every openssl call: `req` needs a [req] section, and the
# extension sections serve both `req -x509` (the CAs) and `x509 -req` (the leaves).
_CONF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = fedkube-test

[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {server_names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class CertSet:
    dir: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(cmd: str, cwd: Path) -> None:
    """Run `openssl CMD` in `cwd`; file names in CMD are relative to it (no spaces)."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("the openssl command is needed to make test certificates")
    proc = subprocess.run([exe, *cmd.split()], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {cmd} failed in {cwd}:\n{proc.stderr}")


def _key(d: Path, name: str) -> None:
    _openssl(f"genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.key", d)
    (d / f"{name}.key").chmod(0o600)


def _ca(d: Path, name: str, cn: str) -> None:
    _key(d, name)
    _openssl(
        f"req -new -x509 -sha256 -days {DAYS} -key {name}.key -out {name}.pem -subj /CN={cn} "
        f"-config openssl.cnf -extensions ca -set_serial {secrets.randbits(63)}",
        d,
    )


def _leaf(d: Path, name: str, cn: str, section: str, ca: str) -> None:
    _key(d, name)
    _openssl(f"req -new -key {name}.key -out {name}.csr -subj /CN={cn} -config openssl.cnf", d)
    _openssl(
        f"x509 -req -sha256 -days {DAYS} -in {name}.csr -CA {ca}.pem -CAkey {ca}.key "
        f"-out {name}.pem -set_serial {secrets.randbits(63)} "
        f"-extfile openssl.cnf -extensions {section}",
        d,
    )


def make_certs(
    directory: Path, server_names: Sequence[str] = ("DNS:localhost", "IP:127.0.0.1")
) -> CertSet:
    """The certificates of the module doc; `server_names` are the server certificate's
    subjectAltNames (``DNS:name`` or ``IP:address``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(_CONF.replace("{server_names}", ",".join(server_names)))
    _ca(d, "ca", "fedkube-test-ca")
    _leaf(d, "server", "localhost", "server", "ca")
    _leaf(d, "client", "fedkube-test-client", "client", "ca")
    _ca(d, "rogue-ca", "fedkube-rogue-ca")
    _leaf(d, "rogue-client", "fedkube-test-client", "client", "rogue-ca")
    return CertSet(
        dir=d,
        ca=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        rogue_ca=d / "rogue-ca.pem",
        rogue_client_cert=d / "rogue-client.pem",
        rogue_client_key=d / "rogue-client.key",
    )
