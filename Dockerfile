# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target operator -t r1-operator .
#   docker build --target runtime  -t r1-runtime .
#   docker build --target runtime --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg GGML_CUDA=on -t r1-runtime:cuda .
# Without a registry (the dev cluster): hack/build-images.sh takes the base from Debian's packages
# (mmdebstrap, as PYTHON_IMAGE) and the already built wheel (--build-context llama-build=DIR).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BASE_IMAGE=${PYTHON_IMAGE}
ARG RUNTIME_BASE=${PYTHON_IMAGE}

# ---- build the llama-cpp-python wheel (the only compiled dependency)
FROM ${BASE_IMAGE} AS llama-build
ARG GGML_CUDA=off
# Real SASS for A100 (80), A10/A40 (86), L4/L40S (89), H100/H200 (90), and PTX of 90 for newer GPUs to JIT-compile.
# CUDA 12.6 needs NVIDIA driver 560.28 or newer (525.60.13 or newer through CUDA's minor-version compatibility).
ARG CUDA_ARCHITECTURES="80-real;86-real;89-real;90-real;90-virtual"
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY hack/llama-wheel.sh hack/
RUN python3 -m venv /opt/build && . /opt/build/bin/activate \
 && pip install --no-cache-dir pip==26.3 setuptools==84.2.1 wheel==0.48.0 \
 && if [ "$GGML_CUDA" = "on" ]; then \
      export CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}"; fi \
 && mkdir -p /wheels && PYTHON=python3 R1_CACHE_DIR=/wheels hack/llama-wheel.sh > /wheels/path.txt

# ---- operator: control plane only, no llama-cpp-python
FROM ${PYTHON_IMAGE} AS operator
WORKDIR /app
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
COPY devtools/ devtools/
RUN python3 -m venv /opt/r1 \
 && /opt/r1/bin/pip install --no-cache-dir '.[operator]' \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin r1
ENV PATH=/opt/r1/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["r1-operator"]

# ---- runtime: data plane (fetch, merge, serve)
FROM ${RUNTIME_BASE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin r1
WORKDIR /app
COPY --from=llama-build /wheels /wheels
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
COPY devtools/ devtools/
RUN python3 -m venv /opt/r1 \
 && /opt/r1/bin/pip install --no-cache-dir "$(cat /wheels/path.txt)" \
 && /opt/r1/bin/pip install --no-cache-dir '.[runtime]' \
 && rm -rf /wheels
ENV PATH=/opt/r1/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["r1-runtime"]
