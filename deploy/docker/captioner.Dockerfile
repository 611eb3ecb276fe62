# syntax=docker/dockerfile:1
# Captioner service (BLIP-2 through transformers) on a CUDA runtime base.
#   docker build -f deploy/docker/captioner.Dockerfile -t cir-captioner .        (from the repository root)
# Weights are never baked in: the profile names a save_pretrained folder under /models (a read-only volume),
# or a hub id resolved through the cache at $HF_HOME=/models/huggingface (HF_HUB_OFFLINE=1 for a pre-filled one).
# PyPI's torch 2.13.0 bundles CUDA 13 libraries: the node needs an NVIDIA driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Versions come from the base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cir \
    && useradd --system --uid 10001 --gid cir --home-dir /home/cir --create-home --shell /usr/sbin/nologin cir \
    && mkdir -p /models /cache \
    && chown cir:cir /cache

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/cir \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch \
    CIR_CAPTIONER_HOST=0.0.0.0 \
    CIR_CAPTIONER_PORT=50052

# Dependencies first (from the pyproject files only), so a code change rebuilds only the small layer below.
WORKDIR /opt/cir/src
COPY deploy/docker/install-service.sh deploy/docker/constraints.txt deploy/docker/
COPY services/common/pyproject.toml services/common/
COPY services/captioner/pyproject.toml services/captioner/
RUN bash deploy/docker/install-service.sh captioner --venv /opt/venv --phase deps
COPY services/common/ services/common/
COPY services/captioner/ services/captioner/
RUN bash deploy/docker/install-service.sh captioner --venv /opt/venv --phase app
COPY deploy/docker/healthcheck.py /opt/cir/healthcheck.py

WORKDIR /home/cir
USER 10001:10001
EXPOSE 50052
# Loading BLIP-2 OPT-6.7b (15.5 GB) from a cold volume takes minutes: NOT_SERVING until then is "starting".
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python", "/opt/cir/healthcheck.py", "captioner"]
ENTRYPOINT ["python", "-m", "cir_captioner"]
