# Diffusion Chat on an NVIDIA GPU.
#
#   docker build -t diffusion-chat .
#   docker run --gpus all --env-file .env -v dc-data:/data -v dc-models:/models diffusion-chat
#
# or `docker compose up -d` (compose.yaml). The host needs the NVIDIA driver and the NVIDIA
# Container Toolkit. Details: docs/operations.md.
#
# The CUDA *runtime* image is enough: torch's wheels bring their own cuDNN and cuBLAS, so
# nothing is compiled here. CUDA 12.8 runs on drivers 525 and newer (minor-version
# compatibility; 570+ recommended) and supports GPUs up to Blackwell.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

# The torch build to install: the CUDA wheel index must match the CUDA line of the base image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_REQUIREMENT="torch>=2.4,<3"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 itself ships 3.10). ca-certificates:
# aiohttp verifies Discord's and Hugging Face's certificates against the system store.
# The PPA tooling is removed again in the same layer. Versions are not pinned (DL3008):
# security updates of these packages should reach every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gnupg \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV"

# torch first, from the CUDA index: it is the largest layer and changes least often. The
# project's own "torch" requirement is then already met, so pip keeps this CUDA build. A range,
# not a pin (DL3013): pass --build-arg TORCH_REQUIREMENT=torch==X.Y.Z to pin one.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"

# The other dependencies, read from pyproject.toml, in a layer of their own so that a code
# change does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Only what the package needs: never the .env, the data or the tests.
COPY README.md ./
COPY core ./core
COPY bot ./bot
COPY cogs ./cogs
COPY api ./api
COPY app ./app
COPY engine ./engine
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /src

# A fixed uid, so bind-mounted directories can be prepared with `chown 1000:1000`.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin bot \
    && mkdir -p /data /models \
    && chown bot:bot /data /models

USER 1000:1000
WORKDIR /home/bot

# DATA_DIR: database and images. HF_HOME: the Hugging Face download cache (models are
# several GB each: keep them in a volume so a new container does not download them again).
# Metrics listen on all interfaces inside the container; compose.yaml publishes the port to
# the host's loopback only.
ENV DATA_DIR=/data \
    HF_HOME=/models \
    HF_HUB_DISABLE_TELEMETRY=1 \
    METRICS_PORT=9464 \
    METRICS_HOST=0.0.0.0
VOLUME ["/data", "/models"]
EXPOSE 9464 8080

# Asks the bot's /healthz (gateway connected and GPU worker alive) with Python's urllib, so
# the image needs no curl. It needs METRICS_PORT (set above); with METRICS_PORT=0 the check
# cannot see the bot and always passes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["diffusion-chat", "healthcheck"]

ENTRYPOINT ["diffusion-chat"]
CMD ["run"]
