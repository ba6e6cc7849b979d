# Sourced by scripts/build_k8s.sh and scripts/build_node.sh: what makes their Go builds
# idempotent and self-contained. The caller sets BIN (where binaries go), BUILD (where
# throwaway modules live) and RECIPE (bump it when the way binaries are built changes,
# so caches of an older recipe are rebuilt).

# need_go SCRIPT: stop with a message naming SCRIPT when Go is missing; static builds.
need_go() {
  command -v go >/dev/null || { echo "$1: Go is not installed (it builds the test environment's binaries from the Go module proxy)" >&2; exit 1; }
  export GOFLAGS="${GOFLAGS:-} -trimpath"
  export CGO_ENABLED=0
}

# have NAME VERSION: the binary is built, by this recipe, at this version.
have() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2 r$RECIPE" ]; }

# mark NAME VERSION: record that it is.
mark() { echo "$2 r$RECIPE" > "$BIN/.$1.version"; }

# new_module NAME: cd into $BUILD/NAME, a module fedkube.local/NAME with a fresh go.mod.
new_module() {
  mkdir -p "$BUILD/$1"
  cd "$BUILD/$1"
  printf 'module fedkube.local/%s\n\ngo 1.24.0\n' "$1" > go.mod
}
