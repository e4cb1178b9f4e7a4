# warmgate: the entrypoint, the probe sidecar and the reference model server in one image.
#
#   CPU (default):  docker build -t warmgate:0.1.0 .
#   GPU:            docker build --build-arg VARIANT=gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 \
#                     -t warmgate:0.1.0-gpu .
#
# VARIANT picks the Python packages (onnxruntime or onnxruntime-gpu); BASE_IMAGE the OS and, for
# gpu, the CUDA runtime (onnxruntime-gpu 1.19+ needs CUDA 12 and cuDNN 9). A gpu build on a base
# without the CUDA runtime stops with an error instead of producing an image that silently runs on
# the CPU. The base is one plain argument rather than a stage chosen by VARIANT because builders
# other than BuildKit (buildah/podman) cannot resolve `FROM stage-${VARIANT}`; it also lets an
# air-gapped build use a local mirror (the container test uses a locally bootstrapped Debian).
#
# The model container runs the ENTRYPOINT (`warmgate run -- <CMD>`); the sidecar runs the same image
# with `command: [warmgate, probe]`. For any other server image (injected mode) the image also
# ships a self-contained `warmgate` (entrypoint and probe, its own interpreter, no Python needed in
# the target) at /opt/warmgate-bundle/warmgate: an init container copies /opt/warmgate-bundle/.
# into a shared volume and the server container runs `<volume>/warmgate run -- <server command>`.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# The self-contained bundle is built on its own base, the same for both variants: it holds no CUDA
# library, and its glibc floor is its build base's (the CUDA bases' python3 is too old for its pins).
ARG BUNDLE_BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: the OS and a Python >= 3.10 -----------------------------------------------------
FROM ${BASE_IMAGE} AS base
# The CUDA runtime images have no Python (and Debian's python3 makes no venv without python3-venv);
# the distribution's is enough. Versions follow the pinned base image's release, so they are not
# pinned again here.
# hadolint ignore=DL3008
RUN if ! python3 -m venv /tmp/venv-check >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && rm -rf /tmp/venv-check
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# ---- build: a self-contained virtual environment in /opt/warmgate ---------------------------
FROM base AS build
ARG VARIANT=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md* warmup.yaml ./
COPY warmgate ./warmgate
# CPU: the plain onnxruntime wheel (about 15 MB) instead of the `server` extra's onnxruntime-gpu,
#      which would also pull CUDA libraries; the rest mirrors the `server` extra in pyproject.toml
#      (tests/deploy/test_dockerfile.py keeps the two lists in step). No torch: the demo model
#      runs on ONNX Runtime, and PyPI's default torch is a multi-GB CUDA build.
# GPU: the `server` extra as it is (onnxruntime-gpu with the CUDA and TensorRT providers).
RUN case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, got '$VARIANT'" >&2; exit 2;; esac \
    && if [ "$VARIANT" = "gpu" ] && ! ldconfig -p | grep -q 'libcudart\.so\.12'; then \
         echo "VARIANT=gpu needs a CUDA 12 runtime base, e.g." \
              "--build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04" >&2; exit 2; \
       fi \
    && python3 -m venv /opt/warmgate \
    && if [ "$VARIANT" = "gpu" ]; then \
         /opt/warmgate/bin/pip install --no-cache-dir ".[server,k8s]"; \
       else \
         /opt/warmgate/bin/pip install --no-cache-dir ".[k8s]" \
           "onnxruntime>=1.17" "onnx>=1.15" "tokenizers>=0.15"; \
       fi \
    && /opt/warmgate/bin/pip uninstall --yes pip setuptools wheel \
    && find /opt/warmgate -name __pycache__ -type d -prune -exec rm -rf {} + \
    && /opt/warmgate/bin/warmgate --version

# ---- bundle: a self-contained warmgate for other images (deploy/bundle, PyInstaller one-dir) -
FROM ${BUNDLE_BASE_IMAGE} AS bundle
# The highest GLIBC symbol version the bundle may need; the build fails above it. 2.35 lets Ubuntu
# 22.04, Ubuntu 24.04 and Debian 12 based server images run it (deploy/bundle/glibc_floor.py).
ARG BUNDLE_MAX_GLIBC=2.35
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# PyInstaller reads dependencies with objdump (binutils) and embeds the shared libpython. Debian's
# and Ubuntu's python3 are linked statically, so the distribution's libpython3.X is added when the
# base lacks it (python:*-slim images have it). Only this stage gets them, not the final image.
# hadolint ignore=DL3008
RUN soname="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("INSTSONAME"))')" \
    && missing=() \
    && if ! python3 -m venv /tmp/venv-check >/dev/null 2>&1; then missing+=(python3-venv); fi \
    && rm -rf /tmp/venv-check \
    && if ! command -v objdump >/dev/null; then missing+=(binutils); fi \
    && if ! ldconfig -p | grep -qF "$soname"; then \
         missing+=("lib$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')"); \
       fi \
    && if [ "${#missing[@]}" -gt 0 ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends "${missing[@]}" \
         && rm -rf /var/lib/apt/lists/*; \
       fi
COPY deploy/bundle ./deploy/bundle
# Pinned build tools and dependencies first: this layer survives changes to warmgate's sources.
RUN python3 -m venv /opt/bundle-build \
    && /opt/bundle-build/bin/pip install --no-cache-dir -r deploy/bundle/requirements.txt
COPY pyproject.toml README.md* ./
COPY warmgate ./warmgate
RUN /opt/bundle-build/bin/pip install --no-cache-dir --no-deps . \
    && /opt/bundle-build/bin/pyinstaller --noconfirm --log-level WARN \
         --distpath /opt --workpath /tmp/pyinstaller deploy/bundle/warmgate.spec \
    && rm -rf /tmp/pyinstaller \
    && chmod -R a+rX,go-w /opt/warmgate-bundle \
    && python3 deploy/bundle/glibc_floor.py --max "$BUNDLE_MAX_GLIBC" /opt/warmgate-bundle \
    && /opt/warmgate-bundle/warmgate --version

# ---- final: the venv, the default config, a non-root user; no compilers, no pip, no caches ---
FROM base AS final
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="warmgate" \
      org.opencontainers.image.description="Keep model-server pods out of traffic until they are warm" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.warmgate.variant="${VARIANT}"
RUN groupadd --system --gid 10001 warmgate \
    && useradd --system --no-log-init --uid 10001 --gid warmgate \
         --home-dir /home/warmgate --create-home --shell /usr/sbin/nologin warmgate \
    && mkdir -p /var/run/warmgate /etc/warmgate \
    && chown warmgate:warmgate /var/run/warmgate
COPY --from=build /opt/warmgate /opt/warmgate
COPY --from=bundle /opt/warmgate-bundle /opt/warmgate-bundle
COPY warmup.yaml /etc/warmgate/warmup.yaml
ENV PATH=/opt/warmgate/bin:$PATH \
    HOME=/home/warmgate \
    WARMGATE_CONFIG=/etc/warmgate/warmup.yaml \
    WARMGATE_STATE_DIR=/var/run/warmgate
USER 10001:10001
WORKDIR /home/warmgate
# 8000: the model server (OIP v2 REST); 8001: its OIP gRPC service; 8086: the probe sidecar
# (probes and /metrics).
EXPOSE 8000 8001 8086
ENTRYPOINT ["warmgate", "run", "--"]
# Listens on all interfaces so a Service can reach it; the entrypoint and the sidecar use loopback.
CMD ["warmgate", "serve", "--demo", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001"]
