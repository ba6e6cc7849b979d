#!/usr/bin/env bash
# Install fedkube with its dev and example extras, then run every check CI
# runs: lint, format, types, layering contracts, stale stubs, the test suite.
# Extra arguments go to pytest (e.g. -k federation, -x).
set -euo pipefail
FEDKUBE_EXTRAS=dev,examples source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$REPO"
echo "==> ruff";   ruff check . && ruff format --check .
echo "==> mypy";   python scripts/typecheck.py
if [ -f scripts/lint_imports.py ]; then
  echo "==> import contracts"; python scripts/lint_imports.py
fi
# The MongoDB tests run FerretDB, built with Go into ~/.cache/fedkube/bin once.
if ! bash scripts/build_ferretdb.sh; then
  case "${CI:-}" in 1|true|TRUE|True|yes) exit 1 ;; esac
  echo "warning: no FerretDB; the MongoDB tests will be skipped" >&2
fi
# The Kubernetes tests run etcd, kube-apiserver and kube-controller-manager,
# built with Go from the module proxy into ~/.cache/fedkube/k8s once (minutes
# the first time, a second afterwards).
echo "==> kubernetes test environment"
if ! bash scripts/build_k8s.sh >/dev/null; then
  case "${CI:-}" in 1|true|TRUE|True|yes) exit 1 ;; esac
  echo "warning: no Kubernetes test binaries; the Kubernetes tests will be skipped" >&2
fi
# The dashboard's browser test drives Debian's chromium; the metrics test runs
# Debian's prometheus server.
if ! bash scripts/system_deps.sh; then
  case "${CI:-}" in 1|true|TRUE|True|yes) exit 1 ;; esac
  echo "warning: no chromium/prometheus; the browser and Prometheus tests will be skipped" >&2
fi
echo "==> pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
