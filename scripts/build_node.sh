#!/usr/bin/env bash
# Build / install what the real single-node test cluster (scripts/cluster.py,
# fedkube/devenv/cluster.py) needs besides the Kubernetes binaries of
# scripts/build_k8s.sh --node, into a cache outside the repository:
#
#   containerd, containerd-shim-runc-v2, ctr   go install ...containerd/v2/cmd/<name>@v2.4.2
#   coredns                                    CoreDNS v1.15 with only the plugins a test
#                                              cluster's DNS needs (kubernetes, cache, errors,
#                                              health, ready, log, loadbalance, reload)
#   pause                                      a tiny static program that waits for signals
#                                              (the pod sandbox's process)
#
# and the Debian packages that are missing (scripts/system_deps.sh cluster: runc,
# containernetworking-plugins, iptables, nftables, conntrack, socat, ebtables, kmod,
# podman, mmdebstrap).
#
# Idempotent: binaries already built for these versions are kept (a second or so).
#
#   bash scripts/build_node.sh          # build what is missing, print the bin dir
#   bash scripts/build_node.sh --no-apt # do not install Debian packages
set -euo pipefail

CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${FEDKUBE_CACHE:-$HOME/.cache/fedkube}"
BIN="$CACHE/node/bin"
BUILD="$CACHE/node/build"
APT=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) APT=0 ;;
    *) echo "build_node: unknown argument $arg (usage: build_node.sh [--no-apt])" >&2; exit 2 ;;
  esac
done
mkdir -p "$BIN" "$BUILD"

# ---- Debian packages (runc 1.1: crun fails on this cgroup "hybrid" layout)
if [ "$APT" = 1 ]; then
  bash "$(dirname "${BASH_SOURCE[0]}")/system_deps.sh" cluster
fi

RECIPE=1
# shellcheck source=scripts/go_build_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/go_build_lib.sh"
need_go build_node

# ---- containerd (Debian's 1.6 is too old for kubelet 1.34)
for t in containerd containerd-shim-runc-v2 ctr; do
  if ! have "$t" "$CONTAINERD_VERSION"; then
    echo "==> building $t $CONTAINERD_VERSION"
    GOBIN="$BIN" go install -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/$t@$CONTAINERD_VERSION"
    mark "$t" "$CONTAINERD_VERSION"
  fi
done

# ---- CoreDNS: coremain with a short plugin list (the order is the plugin chain's)
if ! have coredns "$COREDNS_VERSION"; then
  echo "==> building coredns $COREDNS_VERSION"
  new_module coredns
  cat > main.go <<'GO'
// CoreDNS for the fedkube test cluster: only the plugins its Corefile uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{
		"reload", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes",
	}
}

func main() { coremain.Run() }
GO
  go get "github.com/coredns/coredns@$COREDNS_VERSION"
  go mod tidy
  go build -ldflags "-s -w" -o "$BIN/coredns" .
  mark coredns "$COREDNS_VERSION"
fi

# ---- pause: PID 1 of a pod sandbox; reaps children, exits on SIGINT/SIGTERM
if ! have pause "1"; then
  echo "==> building pause"
  new_module pause
  cat > main.go <<'GO'
// pause: the process of a pod sandbox. Waits for signals, reaps children.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  go build -ldflags "-s -w" -o "$BIN/pause" .
  mark pause "1"
fi

echo "$BIN"
