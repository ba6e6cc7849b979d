#!/usr/bin/env python3
"""Run the Kubernetes test control plane by hand: etcd, kube-apiserver and
kube-controller-manager on loopback (fedkube/devenv/k8s.py has the details).

    python scripts/k8s_env.py up [--dir DIR]   # foreground; Ctrl-C stops it
    python scripts/k8s_env.py down --dir DIR   # stop one started with `up --dir DIR`

`up` builds the binaries first when missing (scripts/build_k8s.sh, cached in
~/.cache/fedkube/k8s/<version>/bin; the first build takes minutes), then
prints the kubeconfig path and the exports that make the test suite reuse this
environment instead of starting its own:

    export KUBECONFIG=DIR/kubeconfig
    export FEDKUBE_TEST_KUBECONFIG=DIR/kubeconfig

DIR (a fresh temporary directory without --dir, removed when it stops) holds
the certificates, tokens, kubeconfig, etcd data, ``env.json`` and ``logs/``.
Run it with the Python that has fedkube installed (``source scripts/env.sh``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    from fedkube.devenv import k8s
    from fedkube.errors import ServiceUnavailable
    from fedkube.process import wait_for_signal
except ModuleNotFoundError as exc:  # fedkube (or what it needs) is not installed here
    sys.exit(f"error: {exc}: run k8s_env.py with the venv's python (`source scripts/env.sh`)")


def up(dir: Path | None) -> int:
    if dir is not None and k8s.running_in(dir):
        print(f"an environment is already running in {dir} (stop it: down --dir {dir})")
        return 1
    try:
        env = k8s.start(dir, log=lambda m: print(m, flush=True))
    except ServiceUnavailable as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    env.write_state(supervisor=os.getpid())
    print(
        f"Kubernetes {k8s.K8S_VERSION} control plane up in {env.start_seconds:.1f}s "
        f"(apiserver {env.server}; state {env.dir / k8s.ENV_FILE}; logs {env.dir / 'logs'})\n"
        f"    export KUBECONFIG={env.kubeconfig}\n"
        f"    export FEDKUBE_TEST_KUBECONFIG={env.kubeconfig}\n"
        f"    export PATH={env.bin_dir}:$PATH    # kubectl {k8s.K8S_VERSION}\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    rc = 0
    try:
        wait_for_signal(env.check_alive)
        print("stopping ...", flush=True)
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 1
    finally:
        env.stop()
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the control plane in the foreground (Ctrl-C stops)")
    p_up.add_argument("--dir", type=Path, help="state directory (default: a temporary one)")
    down = sub.add_parser("down", help="stop the environment started with `up --dir DIR`")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return up(args.dir)
    stopped = k8s.stop_dir(args.dir)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
