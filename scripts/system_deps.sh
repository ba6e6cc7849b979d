#!/usr/bin/env bash
# Install the Debian packages the tests drive, when they are missing:
#   chromium    the dashboard's browser test (headless, through Playwright's driver;
#               Playwright never downloads a browser of its own here)
#   prometheus  the server that scrapes a local run in the metrics test
# Needs root (or passwordless sudo) and apt; prints what it does. Idempotent.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ "${#need[@]}" -eq 0 ]; then
  echo "==> system packages (present: chromium, prometheus)"
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
