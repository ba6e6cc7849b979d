#!/usr/bin/env bash
# Install fedkube with its dev and example extras, then run every check CI
# runs: lint, format, types, layering contracts, stale stubs, the test suite.
# Extra arguments go to pytest (e.g. -k federation, -x).
#
# What the tests run besides Python is installed or built first, cached outside
# the repository (~/.cache/fedkube; seconds once cached, about 16 minutes on a
# fresh 2-core machine, measured): Debian packages (scripts/system_deps.sh), etcd and the
# Kubernetes binaries (scripts/build_k8s.sh --node), FerretDB
# (scripts/build_ferretdb.sh), containerd and CoreDNS (scripts/build_node.sh),
# then the images of the real test cluster (python scripts/cluster.py build).
# The packages and Go builds run in the background while Python installs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${CI:-}" in 1|true|TRUE|True|yes) STRICT=1 ;; *) STRICT=0 ;; esac
LOGS="${FEDKUBE_CACHE:-$HOME/.cache/fedkube}/logs"
mkdir -p "$LOGS"

# The background builds, one after the other; the failed steps go to builds.failed.
builds() {
  local failed=()
  for step in "system_deps.sh" "build_k8s.sh --node" "build_ferretdb.sh" "build_node.sh --no-apt"; do
    echo "==> $step" >> "$LOGS/builds.log"
    # shellcheck disable=SC2086  # the step's arguments are meant to split
    if ! bash "$HERE"/$step >> "$LOGS/builds.log" 2>&1; then
      failed+=("$step")
    fi
  done
  printf '%s\n' "${failed[@]}" > "$LOGS/builds.failed"
  [ "${#failed[@]}" -eq 0 ]
}
: > "$LOGS/builds.log"
echo "==> system packages and Go builds, in the background (log: $LOGS/builds.log)"
builds &
BUILDS=$!

FEDKUBE_EXTRAS=dev,examples source "$HERE/env.sh"
cd "$REPO"
echo "==> ruff";   ruff check . && ruff format --check .
echo "==> mypy";   python scripts/typecheck.py
if [ -f scripts/lint_imports.py ]; then
  echo "==> import contracts"; python scripts/lint_imports.py
fi

echo "==> waiting for the background builds"
if ! wait "$BUILDS"; then
  echo "these builds failed: $(tr '\n' ' ' < "$LOGS/builds.failed") (log: $LOGS/builds.log)" >&2
  tail -n 40 "$LOGS/builds.log" >&2
  if [ "$STRICT" = 1 ]; then exit 1; fi
  echo "warning: the tests that need them will be skipped" >&2
fi
# The real single-node cluster's images (server, client, example, dev storage), built
# with podman from the project's Dockerfiles; rebuilt only when their inputs changed.
echo "==> test cluster images"
if ! python scripts/cluster.py build >/dev/null; then
  if [ "$STRICT" = 1 ]; then exit 1; fi
  echo "warning: no test cluster; the tests/cluster tests will be skipped" >&2
fi

echo "==> pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
