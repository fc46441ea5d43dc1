# The GPU service image: the CPU service image's contents with onnxruntime-gpu in place of onnxruntime, on a
# CUDA runtime base (`pip install '.[serve,gpu]'`, then the CPU build of onnxruntime removed: both wheels write
# the same `onnxruntime` package, and the last one installed must be the GPU one).
#
#   docker build -f docker/service-gpu.Dockerfile -t keepfit-service-gpu .
#   docker run --gpus all -p 8000:8000 keepfit-service-gpu
#
# PyPI's onnxruntime-gpu (1.2x and later) is built for CUDA 13 and cuDNN 9: keep BASE_IMAGE on a matching
# `cudnn-runtime` tag. Ubuntu 22.04 is used because it packages Python 3.11, which the project requires.
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/keepfit/bin:$PATH

COPY docker/install-python.sh docker/requirements.py docker/constraints.txt /opt/keepfit-build/
RUN /opt/keepfit-build/install-python.sh && python3.11 -m venv /opt/keepfit

COPY pyproject.toml /opt/keepfit-build/
RUN python /opt/keepfit-build/requirements.py /opt/keepfit-build/pyproject.toml serve gpu > /opt/keepfit-build/requirements.txt \
    && pip install -c /opt/keepfit-build/constraints.txt -r /opt/keepfit-build/requirements.txt

COPY pyproject.toml README.md* /src/
COPY model /src/model
COPY index /src/index
COPY service /src/service
COPY training /src/training
# Reinstalling the same onnxruntime-gpu version with --no-deps after removing both builds leaves exactly one,
# complete GPU build; the check fails the build if the CUDA provider is not compiled in.
RUN pip install -c /opt/keepfit-build/constraints.txt '/src[serve,gpu]' \
    && ort_gpu="$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
    && pip uninstall -y -q onnxruntime onnxruntime-gpu \
    && pip install -q --no-deps "onnxruntime-gpu==${ort_gpu}" \
    && rm -rf /src /opt/keepfit-build \
    && python -c "import onnxruntime as ort, sys; sys.exit(None if 'CUDAExecutionProvider' in ort.get_available_providers() else 'onnxruntime lacks CUDAExecutionProvider')" \
    && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the service image' if u.find_spec('torch') else 0)"

COPY artifacts/keepfit-v2-small /artifacts/keepfit-v2-small

RUN useradd --uid 10001 --create-home --home-dir /home/keepfit --shell /usr/sbin/nologin keepfit \
    && mkdir -p /indexes \
    && chown keepfit:keepfit /indexes
USER keepfit

# The runtime falls back to the CPU provider when CUDA is unavailable (no GPU passed to the container).
# ONNX Runtime's usage telemetry off, as in the CPU image (docker/service.Dockerfile says why).
ENV KEEPFIT_ARTIFACT=/artifacts/keepfit-v2-small \
    KEEPFIT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    ORT_DISABLE_TELEMETRY=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["keepfit", "serve", "--host", "0.0.0.0", "--port", "8000"]
