#!/usr/bin/env bash
# Build the Kubernetes test environment's binaries with this machine's Go,
# from the Go module proxy, into a cache outside the repository:
#   etcd, kube-apiserver, kube-controller-manager, kubectl, helm, and for the
#   real single-node cluster (scripts/cluster.py) kubelet, kube-scheduler,
#   kube-proxy (built in the same module, reusing its Go build cache)
# Idempotent: binaries already built for these versions are kept. The first
# build takes several minutes on 2 cores; later runs take a second.
#
#   bash scripts/build_k8s.sh            # build what is missing, print the bin dir
#   bash scripts/build_k8s.sh --node     # also kubelet, kube-scheduler, kube-proxy
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${FEDKUBE_CACHE:-$HOME/.cache/fedkube}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
BUILD="$CACHE/k8s/$K8S_VERSION/build"
mkdir -p "$BIN" "$BUILD"
NODE=0
for arg in "$@"; do
  case "$arg" in
    --node) NODE=1 ;;
    *) echo "build_k8s: unknown argument $arg (usage: build_k8s.sh [--node])" >&2; exit 2 ;;
  esac
done

RECIPE=2
# shellcheck source=scripts/go_build_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/go_build_lib.sh"
need_go build_k8s

# kube-apiserver, kube-controller-manager, kubectl: a module that requires
# k8s.io/kubernetes and replaces every staging module with its published twin.
all_targets=(kube-apiserver kube-controller-manager kubectl)
if [ "$NODE" = 1 ]; then all_targets+=(kube-scheduler kubelet kube-proxy); fi
k8s_targets=()
for t in "${all_targets[@]}"; do
  have "$t" "$K8S_VERSION" || k8s_targets+=("$t")
done
if [ "${#k8s_targets[@]}" -gt 0 ]; then
  echo "==> building ${k8s_targets[*]} $K8S_VERSION (slow the first time)"
  new_module kubernetes
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  staging="$(awk '/^replace \(/{f=1;next} f&&/^\)/{f=0} f&&$1 ~ /^k8s.io\//{print $1}' "$gomod")"
  minor="v0.${K8S_VERSION#v1.}"
  {
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m $minor"; done
    echo ")"
  } >> go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
  go mod tidy
  # Stamp the version (kube-apiserver derives its emulated version and feature
  # defaults from it; unstamped it says v0.0.0-master).
  minor_num="${K8S_VERSION#v1.}"; minor_num="${minor_num%%.*}"
  vpkg="k8s.io/component-base/version"
  ldflags="-X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor_num"
  ldflags="$ldflags -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor_num"
  for t in "${k8s_targets[@]}"; do
    echo "    go build $t"
    go build -ldflags "$ldflags" -o "$BIN/$t" "k8s.io/kubernetes/cmd/$t"
    mark "$t" "$K8S_VERSION"
  done
fi

if ! have etcd "$ETCD_VERSION"; then
  echo "==> building etcd $ETCD_VERSION"
  new_module etcd
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy
  go build -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  mark etcd "$ETCD_VERSION"
fi

if ! have helm "$HELM_VERSION"; then
  echo "==> building helm $HELM_VERSION"
  GOBIN="$BIN" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mark helm "$HELM_VERSION"
fi

echo "$BIN"
