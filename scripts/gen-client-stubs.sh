#!/usr/bin/env bash
# Generates the client stubs for other languages from protos/, offline, with local plugins only:
#
#   Go          clients/go/gopath/src/cirsuite/gen/go/cir/<pkg>/v1/   protoc-gen-go + protoc-gen-go-grpc (Debian)
#   TypeScript  clients/node/gen/cir/<pkg>/v1/                         ts-proto (clients/node devDependency):
#                                                                      messages + @grpc/grpc-js service clients
#   Java        clients/java/gen/dev/cir/<pkg>/v1/                     protoc --java_out + grpc_java_plugin (Debian)
#
# The three folders are git-ignored (clients/.gitignore): generated code is never committed, so it can never be
# stale; run this script after cloning and after every contract change (scripts/ci-deploy-checks.sh runs it and
# then compiles all three). Each run replaces the folders completely; the output depends only on protos/ and the
# tool versions below.
#
# The Go import paths follow each file's go_package ("cirsuite/gen/go/cir/<pkg>/v1"); clients/go/gopath is a
# GOPATH root, so the Go client builds in GOPATH mode against Debian's golang-google-grpc-dev.
# Generated code targets the runtimes of the generators: Go google.golang.org/protobuf 1.28 + grpc-go >= 1.33,
# TypeScript @bufbuild/protobuf 2.x + @grpc/grpc-js 1.x, Java protobuf-java 3.21.x + grpc-java 1.41.x.
#
# usage: scripts/gen-client-stubs.sh
# Tools: apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc protobuf-compiler-grpc-java-plugin;
#        (cd clients/node && npm ci).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTO_ROOT="$ROOT/protos"
GO_ROOT="$ROOT/clients/go/gopath"
GO_DEST="$GO_ROOT/src/cirsuite/gen/go"
TS_DEST="$ROOT/clients/node/gen"
JAVA_DEST="$ROOT/clients/java/gen"
TS_PLUGIN="$ROOT/clients/node/node_modules/.bin/protoc-gen-ts_proto"
JAVA_GRPC_PLUGIN="${JAVA_GRPC_PLUGIN:-/usr/bin/grpc_java_plugin}"

[ $# -eq 0 ] || { echo "usage: $0 (no arguments)" >&2; exit 2; }

missing=()
command -v protoc >/dev/null || missing+=("protoc (apt-get install protobuf-compiler)")
command -v protoc-gen-go >/dev/null || missing+=("protoc-gen-go (apt-get install protoc-gen-go)")
command -v protoc-gen-go-grpc >/dev/null || missing+=("protoc-gen-go-grpc (apt-get install protoc-gen-go-grpc)")
[ -x "$JAVA_GRPC_PLUGIN" ] || missing+=("$JAVA_GRPC_PLUGIN (apt-get install protobuf-compiler-grpc-java-plugin)")
[ -x "$TS_PLUGIN" ] || missing+=("ts-proto (cd clients/node && npm ci)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'gen-client-stubs: missing tool: %s\n' "${missing[@]}" >&2
  exit 1
fi

mapfile -t protos < <(cd "$PROTO_ROOT" && find cir -name '*.proto' | LC_ALL=C sort)
[ ${#protos[@]} -gt 0 ] || { echo "gen-client-stubs: no .proto files under $PROTO_ROOT" >&2; exit 1; }

# The GOPATH root holds nothing but generated code: replace it whole, like the two other folders.
rm -rf "$GO_ROOT" "$TS_DEST" "$JAVA_DEST"
mkdir -p "$GO_ROOT/src" "$TS_DEST" "$JAVA_DEST"
cd "$PROTO_ROOT"
# Go: import paths from go_package; files land at $GO_ROOT/src/cirsuite/gen/go/cir/<pkg>/v1/.
protoc -I . --go_out="$GO_ROOT/src" --go_opt=paths=import \
  --go-grpc_out="$GO_ROOT/src" --go-grpc_opt=paths=import "${protos[@]}"
# TypeScript: ts-proto messages plus @grpc/grpc-js clients/servers; long -> string keeps uint64 exact.
protoc -I . --plugin=protoc-gen-ts_proto="$TS_PLUGIN" --ts_proto_out="$TS_DEST" \
  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,forceLong=string,useOptionals=messages \
  "${protos[@]}"
# Java: message classes plus grpc-java stubs.
protoc -I . --java_out="$JAVA_DEST" \
  --plugin=protoc-gen-grpc-java="$JAVA_GRPC_PLUGIN" --grpc-java_out="$JAVA_DEST" "${protos[@]}"

for dest in "$GO_DEST" "$TS_DEST" "$JAVA_DEST"; do
  echo "generated ${dest#"$ROOT/"} ($(find "$dest" -type f | wc -l) files)"
done
