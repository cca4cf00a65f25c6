# Image for hpo-worker, the set-up step and the dashboard (see docker-compose.yml).
#
# torch comes from PyPI, whose Linux x86_64 wheels bundle the CUDA runtime: the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit. The pin below takes torch 2.14.x, whose
# PyPI wheels are CUDA 13.0 builds (torch.version.cuda == "13.0"): they need NVIDIA driver 580 or
# newer. For an older driver, build with a torch from PyTorch's own index instead, whose
# CUDA version the driver supports (`nvidia-smi` shows the highest), e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t hpo:latest .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned to the CUDA build the driver floor above names; then the other dependencies,
# read from pyproject.toml alone, so that editing the code does not throw away these
# multi-gigabyte layers.
ARG TORCH="torch>=2.14,<2.15"
ARG TORCHVISION="torchvision>=0.29,<0.30"
ARG TORCH_INDEX=
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH" "$TORCHVISION"
COPY pyproject.toml /tmp/build/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt

COPY pyproject.toml README.md /tmp/build/
COPY hpo /tmp/build/hpo
COPY search_spaces /tmp/build/search_spaces
RUN pip install --no-deps /tmp/build && rm -rf /tmp/build

# Named volumes copy the ownership of these folders on first use, so the non-root user can write.
RUN useradd --create-home --uid 1000 hpo \
    && mkdir -p /work /artifacts /cache \
    && chown hpo:hpo /work /artifacts /cache
USER hpo
WORKDIR /work
ENV HPO_ARTIFACTS=/artifacts \
    HPO_CACHE_DIR=/cache

CMD ["hpo-worker", "--help"]
