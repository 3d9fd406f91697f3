# One image for every nst process: `nst api`, `nst worker`, `nst train` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch comes from PyPI, unpinned. On Linux x86_64 PyPI's wheel is the CUDA build: it carries
# the CUDA runtime in nvidia-* wheels, so no CUDA base image is needed; the host's driver reaches
# the container through the NVIDIA Container Toolkit (the GPU reservation in docker-compose.yml),
# and the same wheel falls back to the CPU where there is no GPU. For a CPU-only image several GB
# smaller, build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
ARG TORCH_INDEX_URL=""

WORKDIR /src

# Dependencies first, in their own layer, so that a code change does not reinstall torch.
COPY pyproject.toml ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install torch torchvision --index-url "$TORCH_INDEX_URL"; \
    fi \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the project itself (.dockerignore keeps the venv, tests and caches out).
COPY . .
RUN pip install --no-deps . \
 && rm -rf /src

# A non-root user. The mount points belong to it, so the named volumes created on them start out
# writable by it (Docker copies the ownership of the image's folder into an empty volume).
RUN useradd --create-home --uid 1000 nst \
 && mkdir -p /data /artifacts \
 && chown nst:nst /data /artifacts
USER nst
WORKDIR /home/nst

EXPOSE 8000
CMD ["nst", "--help"]
