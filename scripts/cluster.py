#!/usr/bin/env python3
"""A real single-node Kubernetes cluster for the test suite, in a network
namespace of its own (fedkube/devenv/cluster.py has the details). Needs root.

    python scripts/cluster.py build                  # build/install every part (cached)
    python scripts/cluster.py up [--dir DIR] [--detach]
    python scripts/cluster.py status [--dir DIR]
    python scripts/cluster.py exec [--dir DIR] -- CMD...
    python scripts/cluster.py down [--dir DIR]

build   Builds what is missing into ~/.cache/fedkube (idempotent; seconds once
        cached): kubelet, kube-scheduler, kube-proxy (scripts/build_k8s.sh --node,
        with etcd, kube-apiserver, kube-controller-manager, kubectl), containerd,
        containerd-shim-runc-v2, ctr, CoreDNS, pause (scripts/build_node.sh), the
        Debian packages it needs (runc, containernetworking-plugins, iptables,
        podman, mmdebstrap, ...), then the images with podman, each saved as a
        docker-archive keyed by a hash of its inputs (fedkube/devenv/images.py):
        localhost/fedkube-base:bookworm (mmdebstrap), ghcr.io/fedkube/fedkube:VERSION
        (Dockerfile), ghcr.io/fedkube/fedkube-client:VERSION (client/Dockerfile),
        ghcr.io/fedkube/fedkube-example-linear:VERSION (examples/linear/Dockerfile) and
        the test-only images of scripts/cluster_images/ (localhost/fedkube-dev-s3:dev,
        localhost/fedkube-dev-mongodb:dev, the pause and CoreDNS images). A missing
        Dockerfile is a warning (an error under CI=true).

up      Builds (cached), then starts the cluster in DIR (default: a new temporary
        directory, removed by `down`): a network namespace fedkube-<id> with the pod
        bridge cni0 (10.244.0.1, the node's address), etcd, kube-apiserver,
        kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy and
        CoreDNS, the images imported. Waits for node Ready and CoreDNS Ready, writes
        DIR/env.json and prints the exports that make the test suite reuse it:
            export KUBECONFIG=DIR/kubeconfig            # via 127.0.0.1:<port>
            export FEDKUBE_CLUSTER_DIR=DIR
        Stays in the foreground (Ctrl-C stops it) unless --detach, which returns once
        the cluster is up (its supervisor logs to DIR/logs/supervisor.log). The host
        reaches the apiserver through a forwarder the supervisor runs; nothing of the
        cluster touches the host's network.

status  What runs (pids, memory), the node's conditions, the pods of kube-system.

exec    Runs CMD on the node's network (in the namespace) with KUBECONFIG set to
        DIR/kubeconfig-netns (server https://10.244.0.1:6443) and kubectl on PATH.

down    Stops everything (pods, shims, kubelet, containerd, control plane), unmounts
        what is mounted under DIR, removes the cgroups and the namespace, restores the
        global sysctls the kubelet changed. Idempotent; works after a crash of `up`.

Without --dir, status/exec/down use $FEDKUBE_CLUSTER_DIR, else the directory the
last `up` recorded in ~/.cache/fedkube/cluster/last. Run it with the Python that has
fedkube installed (``source scripts/env.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from fedkube.devenv import cluster as cl
    from fedkube.errors import ServiceUnavailable
    from fedkube.process import read_tail, wait_for_signal
except ModuleNotFoundError as exc:
    sys.exit(f"error: {exc}: run cluster.py with the venv's python (`source scripts/env.sh`)")

LAST = cl.cluster_cache() / "last"
HERE = Path(__file__).resolve().parent.parent
if cl.REPO.resolve() != HERE:
    sys.exit(
        f"error: this Python's fedkube is installed from {cl.REPO}, not from this checkout "
        f"({HERE}): the images would be built from the other one; `source scripts/env.sh` "
        "here first"
    )


def say(msg: str) -> None:
    print(msg, flush=True)


def _dir_arg(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    if os.environ.get("FEDKUBE_CLUSTER_DIR"):
        return Path(os.environ["FEDKUBE_CLUSTER_DIR"]).resolve()
    try:
        return Path(LAST.read_text().strip())
    except OSError:
        sys.exit("error: no --dir, no FEDKUBE_CLUSTER_DIR and no cluster recorded by `up`")


def cmd_build(rebuild: bool | None) -> int:
    try:
        paths = cl.build(say, rebuild=rebuild)
    except ServiceUnavailable as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    say(json.dumps(paths.to_json(), indent=2))
    return 0


def _exports(c: cl.Cluster) -> str:
    return (
        f"    export KUBECONFIG={c.kubeconfig}\n"
        f"    export FEDKUBE_CLUSTER_DIR={c.dir}\n"
        f"    export PATH={c.paths.k8s_bin}:$PATH    # kubectl {cl.K8S_VERSION}"
    )


def cmd_up(dir: Path | None, detach: bool, rebuild: bool | None, temporary: bool = False) -> int:
    if dir is not None and cl.running_in(dir):
        say(f"a cluster is already running in {dir} (stop it: down --dir {dir})")
        return 1
    if detach:
        return _detach(dir, rebuild)
    try:
        paths = cl.build(say, rebuild=rebuild)
        c = cl.start(dir, paths=paths, log=say, supervisor_pid=os.getpid())
    except ServiceUnavailable as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    if temporary:
        c.remove_dir = True
        c.state["remove_dir"] = True
    c.write_state(ready=True)
    LAST.parent.mkdir(parents=True, exist_ok=True)
    LAST.write_text(f"{c.dir}\n")
    say(
        f"cluster up in {c.start_seconds:.1f} s (netns {c.netns_name}, node {c.node_ip}, "
        f"apiserver {c.server}; state {c.dir / cl.ENV_FILE}; logs {c.dir / 'logs'})\n"
        f"{_exports(c)}\n"
        f"images: {', '.join(c.images)}\n"
        "Ctrl-C (or `down`) stops it."
    )
    rc = 0
    try:
        wait_for_signal(c.check_alive)
        say("stopping ...")
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 1
    finally:
        c.stop(say)
    return rc


def _detach(dir: Path | None, rebuild: bool | None) -> int:
    temporary = dir is None
    root = Path(tempfile.mkdtemp(prefix="fedkube-cl-")) if dir is None else dir.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    log = root / "logs" / "supervisor.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "up", "--dir", str(root)]
    if temporary:
        argv.append("--_temporary")
    if rebuild is False:
        argv.append("--no-rebuild")
    (root / cl.ENV_FILE).unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    say(f"starting the cluster in {root} (supervisor pid {proc.pid}, log {log}) ...")
    while True:
        state = cl.load_state(root)
        if state and state.get("ready") and state.get("supervisor_pid") == proc.pid:
            break
        if proc.poll() is not None:
            print(f"error: `up` exited with {proc.returncode}; its log ends:", file=sys.stderr)
            print(read_tail(log, 30), file=sys.stderr)
            return 1
        time.sleep(0.5)
    c = cl.attach(root)
    LAST.parent.mkdir(parents=True, exist_ok=True)
    LAST.write_text(f"{root}\n")
    say(f"cluster up in {c.start_seconds:.1f} s (netns {c.netns_name})\n{_exports(c)}")
    return 0


def cmd_down(dir: Path) -> int:
    stopped = cl.stop_dir(dir, log=say)
    say(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def cmd_status(dir: Path) -> int:
    state = cl.load_state(dir)
    if state is None:
        say(f"no cluster state in {dir}")
        return 1
    say(f"dir {dir}  netns {state.get('netns')}  ready {state.get('ready')}")
    rss = cl.rss_mib(state)
    for name, pid in (state.get("pids") or {}).items():
        alive = cl.pid_is(pid, name)
        say(f"  {name:24} pid {pid:<8} {'running' if alive else 'NOT RUNNING':12} "
            f"{rss.get(name, 0):7.1f} MiB")  # fmt: skip
    if "shims" in rss:
        say(f"  {'shims':24} {'':12} {'':12} {rss['shims']:7.1f} MiB")
    say(f"  total RSS {sum(rss.values()):.0f} MiB")
    try:
        c = cl.attach(dir)
    except ServiceUnavailable as exc:
        say(f"(not reachable: {exc})")
        return 1
    _, node = c.request("GET", f"/api/v1/nodes/{c.node_name}")
    for cond in (node.get("status") or {}).get("conditions", []) if isinstance(node, dict) else []:
        say(f"  node {cond['type']:20} {cond['status']:6} {cond.get('reason', '')}")
    subprocess.run(c.kubectl_argv("get", "pods", "-n", "kube-system", "-o", "wide"), check=False)
    return 0


def cmd_exec(dir: Path, argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.exit("error: exec needs a command: exec -- CMD...")
    try:
        c = cl.attach(dir)
    except ServiceUnavailable as exc:
        sys.exit(f"error: {exc}")
    return c.run_in_netns(argv, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="build/install every part into ~/.cache/fedkube")
    p_up = sub.add_parser("up", help="start the cluster (foreground; --detach to return)")
    p_up.add_argument("--dir", type=Path, help="state directory (default: a temporary one)")
    p_up.add_argument("--detach", action="store_true", help="return once it is up")
    p_up.add_argument("--_temporary", action="store_true", help=argparse.SUPPRESS)
    for p in (p_build, p_up):
        p.add_argument(
            "--no-rebuild",
            action="store_true",
            help="keep archived images whose inputs changed (also FEDKUBE_CLUSTER_NO_REBUILD=1)",
        )
    for name, help_ in (
        ("down", "stop the cluster and undo its host state (idempotent)"),
        ("status", "what runs, node conditions, kube-system pods"),
        ("exec", "run CMD on the node's network with KUBECONFIG set: exec -- CMD..."),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", type=Path, help="the cluster's directory")
        if name == "exec":
            p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rebuild = False if getattr(args, "no_rebuild", False) else None  # None: the env decides
    if args.cmd == "build":
        return cmd_build(rebuild)
    if args.cmd == "up":
        return cmd_up(args.dir, args.detach, rebuild, args._temporary)
    dir = _dir_arg(args.dir)
    if args.cmd == "down":
        return cmd_down(dir)
    if args.cmd == "status":
        return cmd_status(dir)
    return cmd_exec(dir, args.command)


if __name__ == "__main__":
    sys.exit(main())
