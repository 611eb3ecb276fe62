# syntax=docker/dockerfile:1
# Reasoner service (the LLM tasks) with the official vllm wheel, on a CUDA runtime base.
#   docker build -f deploy/docker/reasoner.Dockerfile -t cir-reasoner .        (from the repository root)
# Weights are never baked in: the profile names a model folder under /models (a read-only volume), or a hub
# id resolved through the cache at $HF_HOME=/models/huggingface (HF_HUB_OFFLINE=1 for a pre-filled one).
# The same image serves the "openai" backend (an external vLLM server or a hosted model) without a GPU.
# PyPI's torch 2.13.0 bundles CUDA 13 libraries: the node needs an NVIDIA driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# gcc, libc6-dev and python3-dev: Triton (under vLLM) compiles its small C launchers when the engine starts.
# Versions come from the base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cir \
    && useradd --system --uid 10001 --gid cir --home-dir /home/cir --create-home --shell /usr/sbin/nologin cir \
    && mkdir -p /models /cache \
    && chown cir:cir /cache

# vLLM's compile and kernel caches go to /cache (an emptyDir or volume; keep it between restarts to start faster).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/cir \
    XDG_CACHE_HOME=/cache \
    VLLM_CACHE_ROOT=/cache/vllm \
    TRITON_CACHE_DIR=/cache/triton \
    HF_HOME=/models/huggingface \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    CIR_REASONER_HOST=0.0.0.0 \
    CIR_REASONER_PORT=50053

# Dependencies first (from the pyproject files only, with the "vllm" extra), then the code.
WORKDIR /opt/cir/src
COPY deploy/docker/install-service.sh deploy/docker/constraints.txt deploy/docker/
COPY services/common/pyproject.toml services/common/
COPY services/reasoner/pyproject.toml services/reasoner/
RUN bash deploy/docker/install-service.sh reasoner --venv /opt/venv --phase deps
COPY services/common/ services/common/
COPY services/reasoner/ services/reasoner/
RUN bash deploy/docker/install-service.sh reasoner --venv /opt/venv --phase app
COPY deploy/docker/healthcheck.py /opt/cir/healthcheck.py

WORKDIR /home/cir
USER 10001:10001
EXPOSE 50053
# vLLM loads the weights, profiles memory and captures CUDA graphs before SERVING: allow a long start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python", "/opt/cir/healthcheck.py", "reasoner"]
ENTRYPOINT ["python", "-m", "cir_reasoner"]
