# Image for hpo-worker, the study-creation step and the dashboard (see docker-compose.yml).
# torch/torchvision come from PyPI, whose Linux wheels bundle the CUDA runtime: the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, read from pyproject.toml alone, so that editing the code does not throw away
# the multi-gigabyte torch layer.
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
