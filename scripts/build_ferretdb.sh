#!/usr/bin/env bash
# Build FerretDB (a MongoDB wire-protocol server; the tests run it with its
# SQLite handler) with this machine's Go, from the Go module proxy, into a
# cache outside the repository: $FEDKUBE_CACHE/bin/ferretdb (FEDKUBE_CACHE
# defaults to ~/.cache/fedkube). Idempotent: a cached binary of the right
# version is kept ("==> ferretdb (cached)").
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: the
# binary it produces panics at start ("Invalid build/version/version.txt"),
# because FerretDB reads its version from a file its own build writes. So we
# copy the module source out of the module cache, write that file, and build.
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
FEDKUBE_CACHE="${FEDKUBE_CACHE:-$HOME/.cache/fedkube}"
BIN="$FEDKUBE_CACHE/bin/ferretdb"

# (no `--version | grep -q`: under pipefail, grep exiting early can fail the pipe)
cached="$("$BIN" --version 2>/dev/null || true)"
if [[ $'\n'"$cached"$'\n' == *$'\n'"version: $FERRETDB_VERSION"$'\n'* ]]; then
  echo "==> ferretdb (cached)"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<EOF
build_ferretdb.sh: Go is not installed (no 'go' on PATH).
FerretDB $FERRETDB_VERSION is built from source with Go (>= 1.22) to run the
MongoDB state-store tests. Install Go (https://go.dev/dl/, or your package
manager's golang package), make sure 'go' is on PATH, and run this script again.
EOF
  exit 1
fi

echo "==> building ferretdb $FERRETDB_VERSION with $(go version | cut -d' ' -f3) into $BIN (1-2 minutes the first time)"
work="$(mktemp -d "${TMPDIR:-/tmp}/fedkube-ferretdb.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

src="$(cd "$work" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
  python3 -c 'import json, sys
info = json.load(sys.stdin)
if info.get("Error"):
    sys.exit("go mod download: " + info["Error"])
print(info["Dir"])')"
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
printf '%s' "$FERRETDB_VERSION" > "$work/src/build/version/version.txt"
mkdir -p "$(dirname "$BIN")"
(cd "$work/src" && go build -buildvcs=false -o "$work/ferretdb" ./cmd/ferretdb)
got="$("$work/ferretdb" --version | sed -n 's/^version: //p')"
if [ "$got" != "$FERRETDB_VERSION" ]; then
  echo "build_ferretdb.sh: built binary reports version '$got', expected $FERRETDB_VERSION" >&2
  exit 1
fi
mv -f "$work/ferretdb" "$BIN"
echo "==> ferretdb $FERRETDB_VERSION built: $BIN"
