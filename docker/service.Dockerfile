# The CPU service image: the torch-free runtime, FAISS and the API, installed as the README installs them
# (`pip install '.[serve]'`), with the committed default artifact and no torch.
#
#   docker build -f docker/service.Dockerfile -t keepfit-service .
#   docker run -p 8000:8000 keepfit-service
#
# BASE_IMAGE is a build argument so the same file builds on a registry base and on a locally imported Debian
# bookworm where no registry can be reached (docker/stack.py); Python comes from apt only when the base
# lacks it (docker/install-python.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/keepfit/bin:$PATH

COPY docker/install-python.sh docker/requirements.py docker/constraints.txt /opt/keepfit-build/
RUN /opt/keepfit-build/install-python.sh && python3.11 -m venv /opt/keepfit

# Dependencies first, in their own layer, so a code change rebuilds in seconds.
COPY pyproject.toml /opt/keepfit-build/
RUN python /opt/keepfit-build/requirements.py /opt/keepfit-build/pyproject.toml serve > /opt/keepfit-build/requirements.txt \
    && pip install -c /opt/keepfit-build/constraints.txt -r /opt/keepfit-build/requirements.txt

# The README's install (README.md* because a COPY glob may match nothing, and pyproject names it).
COPY pyproject.toml README.md* /src/
COPY model /src/model
COPY index /src/index
COPY service /src/service
COPY training /src/training
RUN pip install -c /opt/keepfit-build/constraints.txt '/src[serve]' \
    && rm -rf /src /opt/keepfit-build \
    && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the service image' if u.find_spec('torch') else 0)"

COPY artifacts/keepfit-v2-small /artifacts/keepfit-v2-small

# An unprivileged user owns the index folder, so a fresh named volume mounted there (which Docker fills from
# the image, ownership included) is writable by the index builder and the API alike. It has a home
# (onnxruntime's telemetry, turned off below, kept its device id there).
RUN useradd --uid 10001 --create-home --home-dir /home/keepfit --shell /usr/sbin/nologin keepfit \
    && mkdir -p /indexes \
    && chown keepfit:keepfit /indexes
USER keepfit

# ONNX Runtime's usage telemetry (on by default on Linux since 2026) would keep a device id in the home and send
# events to Microsoft, and a container without a way out waited on it at exit (SIGKILLed after docker's 10 s).
ENV KEEPFIT_ARTIFACT=/artifacts/keepfit-v2-small \
    ORT_DISABLE_TELEMETRY=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["keepfit", "serve", "--host", "0.0.0.0", "--port", "8000"]
