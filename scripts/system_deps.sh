#!/usr/bin/env bash
# Install the Debian packages the tests drive, when they are missing, by group
# (default: all of them):
#   browser   chromium: the dashboard's browser test (headless, through Playwright's
#             driver; Playwright never downloads a browser of its own here)
#   metrics   prometheus: the server that scrapes a local run in the metrics test
#   cluster   runc, containernetworking-plugins, iptables, nftables, conntrack, socat,
#             ebtables, kmod: the real single-node test cluster's node
#             (scripts/build_node.sh builds the rest: containerd, CoreDNS, pause);
#             podman, mmdebstrap: its images, built from the project's Dockerfiles on a
#             Debian base (fedkube/devenv/images.py)
# Needs root (or passwordless sudo) and apt; prints what it does. Idempotent.
#
#   bash scripts/system_deps.sh [browser|metrics|cluster ...]
set -euo pipefail

PACKAGES=()
for group in "${@:-browser metrics cluster}"; do
  for g in $group; do
    case "$g" in
      browser) PACKAGES+=(chromium) ;;
      metrics) PACKAGES+=(prometheus) ;;
      cluster) PACKAGES+=(runc containernetworking-plugins iptables nftables conntrack socat
                          ebtables kmod podman mmdebstrap) ;;
      *) echo "system_deps.sh: unknown group $g (browser, metrics, cluster)" >&2; exit 2 ;;
    esac
  done
done
need=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -eq 0 ]; then
  echo "==> system packages (present: ${PACKAGES[*]})"
  exit 0
fi
echo "==> system packages: installing ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps.sh: no apt-get; install ${need[*]} with your package manager" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "system_deps.sh: not root and no sudo; install ${need[*]} as root" >&2
    exit 1
  fi
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null || true
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's prometheus package starts a service where an init system runs one; the
# tests start their own server on a free loopback port, so that one is not needed.
