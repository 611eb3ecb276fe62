#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC stubs from protos/ into the shared library
# (services/common/src/cir/...). With --check, fails if the committed stubs are stale.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DEST="$ROOT/services/common/src"

generate() {
  local out="$1"
  mkdir -p "$out"
  local protos
  mapfile -t protos < <(cd "$ROOT/protos" && find cir -name '*.proto' | sort)
  (cd "$ROOT/protos" && "$PY" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${protos[@]}")
  # Generated modules import each other as cir.<service>.v1.*: make every level a package.
  find "$out/cir" -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
}

if [ "${1:-}" = "--check" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp"
  if ! diff -r -q -x '__pycache__' "$tmp/cir" "$DEST/cir"; then
    echo "Python stubs are stale: run scripts/gen-python-stubs.sh and commit the result." >&2
    exit 1
  fi
  echo "Python stubs are up to date."
else
  rm -rf "$DEST/cir"
  generate "$DEST"
  echo "Generated Python stubs in ${DEST#"$ROOT/"}/cir"
fi
