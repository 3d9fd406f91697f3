#!/usr/bin/env bash
# The GPU path measured in one call of a lent GPU machine (docs/BENCHMARKS.md, "The GPU path"):
# the inference modes' fidelity against eager float32 on the CPU, then labeling through the
# API and a Celery worker on the GPU against the model alone, with the GPU's utilisation.
#
#   scripts/device_kit.sh                                   # here, once: fills .devkit/
#   run(command="bash bench/gpu_check.sh", carry=[".devkit"], timeout_s=540)
#
# Each part has its own time limit, so a slow one still leaves the others' results; all of it
# is printed and written under $OUT (or /tmp/gpu-check).
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .devkit/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .devkit/fashion-mnist/*.gz /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, timm, service.main, workers.tasks, cli.localstack
print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0), 'cores', __import__('os').cpu_count())" \
    2>&1 | tee -a "$out/gpu.txt" || exit 1
timeout 150 python3 -m bench.label_fidelity --device cuda --modes eager,bf16,compile --threads 4 \
    2>&1 | tee "$out/fidelity.txt"
timeout 330 python3 -m bench.label_throughput --device cuda --models resnet18,efficientnet_b0 \
    --sizes 224 --images-224 4000 --batch-size 256 --shard-size 2000 --workers 12 --threads 4 \
    --repeats 2 --reuse-teacher 2>&1 | tee "$out/throughput.txt"
