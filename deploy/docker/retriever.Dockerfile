# syntax=docker/dockerfile:1
# Retriever service (the public API, the gallery store, fusion): slim, no torch, no GPU.
#   docker build -f deploy/docker/retriever.Dockerfile -t cir-retriever .        (from the repository root)
# The gallery store lives at /data/collections: mount a persistent volume there.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 cir \
    && useradd --system --uid 10001 --gid cir --home-dir /home/cir --create-home --shell /usr/sbin/nologin cir \
    && mkdir -p /data/collections \
    && chown -R cir:cir /data

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/cir \
    CIR_RETRIEVER_HOST=0.0.0.0 \
    CIR_RETRIEVER_PORT=50050 \
    CIR_RETRIEVER_STORE_DIR=/data/collections \
    CIR_RETRIEVER_ENCODER_ADDRESS=encoder:50051 \
    CIR_RETRIEVER_CAPTIONER_ADDRESS=captioner:50052 \
    CIR_RETRIEVER_REASONER_ADDRESS=reasoner:50053

WORKDIR /opt/cir/src
COPY deploy/docker/install-service.sh deploy/docker/constraints.txt deploy/docker/
COPY services/common/pyproject.toml services/common/
COPY services/retriever/pyproject.toml services/retriever/
RUN bash deploy/docker/install-service.sh retriever --venv /opt/venv --phase deps
COPY services/common/ services/common/
COPY services/retriever/ services/retriever/
RUN bash deploy/docker/install-service.sh retriever --venv /opt/venv --phase app \
    && if python -c 'import torch' 2>/dev/null; then echo 'torch must not be in the retriever image' >&2; exit 1; fi
COPY deploy/docker/healthcheck.py /opt/cir/healthcheck.py

WORKDIR /home/cir
USER 10001:10001
EXPOSE 50050
HEALTHCHECK --interval=15s --timeout=5s --start-period=2m --retries=3 \
    CMD ["python", "/opt/cir/healthcheck.py", "retriever"]
ENTRYPOINT ["python", "-m", "cir_retriever"]
