# Sourced by scripts/quickstart.sh and scripts/test.sh: make sure the Python
# environment exists and holds fedkube (editable) with the extras named in
# $FEDKUBE_EXTRAS. The venv lives outside the repo, so it (and the large
# PyTorch download) is reused by every checkout and CI run on this machine.
set -euo pipefail
# The repository has a top-level folder named operator/ (mapped to
# fedkube.operator). Python must never put the repository root on sys.path by
# itself (as `python -m ...` does with the current directory), or that folder
# would shadow the standard library's operator module.
export PYTHONSAFEPATH=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FEDKUBE_VENV="${FEDKUBE_VENV:-$HOME/.cache/fedkube/venv}"
PYTHON="${PYTHON:-python3}"
FEDKUBE_EXTRAS="${FEDKUBE_EXTRAS:-examples}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "fedkube needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$FEDKUBE_VENV/bin/python" ]; then
  echo "==> creating the Python environment in $FEDKUBE_VENV"
  mkdir -p "$(dirname "$FEDKUBE_VENV")"
  "$PYTHON" -m venv "$FEDKUBE_VENV"
  "$FEDKUBE_VENV/bin/python" -m pip install -q --upgrade pip
fi
# Reinstall only when the dependencies or this checkout changed.
stamp="$FEDKUBE_VENV/.fedkube-install"
want="$(cat "$REPO/pyproject.toml" | sha256sum | cut -c1-16) $REPO [$FEDKUBE_EXTRAS]"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing fedkube[$FEDKUBE_EXTRAS] into $FEDKUBE_VENV (PyTorch is a large download the first time)"
  "$FEDKUBE_VENV/bin/python" -m pip install -q --progress-bar off -e "$REPO[$FEDKUBE_EXTRAS]"
  echo "$want" > "$stamp"
fi
export PATH="$FEDKUBE_VENV/bin:$PATH"
