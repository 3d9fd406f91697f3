#!/usr/bin/env bash
# What a lent GPU machine (the `device` tool's nvidia kinds) lacks to run bench/gpu_check.sh,
# gathered here into .devkit/ (git-ignored; name it in the run's carry, about 40 MB):
# cp312 wheels of the packages its image does not hold, at the versions this checkout's .venv
# runs, and the Fashion-MNIST files the benchmarks write their images from.
set -euo pipefail
cd "$(dirname "$0")/.."
# That image holds torch, torchvision, timm, safetensors, numpy, pillow, pyarrow, httpx, click,
# jinja2, matplotlib, fsspec, tqdm and prometheus-client; these are the rest of what the API, a
# worker and the benchmarks import (openvino, s3fs and psycopg are imported only when used),
# with typing-extensions and anyio at this checkout's versions, which pydantic and starlette need.
PACKAGES=(
    alembic amqp annotated-types anyio billiard celery click-didyoumean click-plugins click-repl
    fastapi fastapi-offline kombu mako opentelemetry-api prompt-toolkit pydantic pydantic-core
    pydantic-settings python-dotenv python-multipart sqlalchemy starlette typing-extensions
    typing-inspection tzlocal uvicorn vine wcwidth
)
pins=()
for name in "${PACKAGES[@]}"; do
    pins+=("$name==$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")")
done
rm -rf .devkit && mkdir -p .devkit/wheels .devkit/fashion-mnist
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .devkit/wheels "${pins[@]}"
cp /usr/share/datasets/fashion-mnist/*.gz .devkit/fashion-mnist/
du -sh .devkit
