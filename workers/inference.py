"""How a teacher's forward pass runs: the inference modes a job may ask for.

- ``eager``: the model as built, float32: the exact reference every other mode is held to.
- ``bf16``: bfloat16 autocast on a channels-last copy (AMX / AVX-512 bf16 units, tensor cores).
- ``compile``: ``torch.compile``'s graph of the float32 model.
- ``openvino``: the float32 model converted to OpenVINO and run by its CPU plugin, at float32
  precision (OpenVINO would otherwise pick bf16 on a CPU with AMX).

Each is prepared once per worker process, teacher and batch size (``teacher_model.cached_teacher``),
then called per batch; OpenVINO's converted graph is also kept on the host's disk
(``graph_cache``), so other processes and later ones read it instead of converting again. A
preparation that fails, or whose first forward fails, falls back to eager with a log line: the
job labels either way, and its shards record the mode that ran.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nst.inference import MODES
from workers import graph_cache

logger = logging.getLogger(__name__)


# What ``auto`` runs, per device: the fastest mode that passed the fidelity gate (argmaxes
# within 0.5% of eager float32, confidences within 0.01) on real teachers, by
# bench/label_fidelity.py and bench/label_throughput.py (docs/BENCHMARKS.md). bf16 failed it
# on the CPU (EfficientNet-Lite0: 9% of argmaxes moved); on a GPU it is unmeasured, so eager.
DEFAULT_MODE = {"cpu": "openvino", "cuda": "eager"}


class Runner:
    """Images (a CPU batch) in, float32 CPU logits out; ``mode`` says what actually ran."""

    def __init__(self, mode: str, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.mode, self._forward = mode, forward

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(images).float().cpu()


def resolve(mode: str, device: str) -> str:
    """The mode a job's setting names on this device (``auto``: the device's default)."""
    if mode != "auto":
        return mode
    return DEFAULT_MODE["cuda" if device.startswith("cuda") else "cpu"]


def prepare(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: str,
    mode: str,
    batch_size: int,
    saved_as: Path | None = None,
) -> Runner:
    """``model`` (float32, on ``device``, in eval mode) ready to run in ``mode``; eager if that
    fails. A warm-up batch of ``batch_size`` runs here, so compiling happens now and not
    inside a shard, and a mode that builds but cannot run is caught here too. ``saved_as``: the
    ``graph_cache`` folder of this model's converted graph (None: converted in memory)."""
    if mode not in MODES:
        raise ValueError(f"inference mode {mode!r} is not one of {MODES}")
    if mode != "eager":
        try:
            forward = _PREPARE[mode](model, input_shape, device, batch_size, saved_as)
            with torch.inference_mode():
                forward(torch.zeros(batch_size, *input_shape))
            return Runner(mode, forward)
        except Exception as exc:  # any failure to prepare is a reason to label in eager, not to fail
            logger.warning(
                "inference mode %s could not be prepared on %s (%s: %s); labeling in eager float32",
                mode,
                device,
                type(exc).__name__,
                str(exc)[:300],
            )
    return Runner("eager", _eager(model, input_shape, device, batch_size))


def _eager(model: nn.Module, input_shape, device: str, batch_size: int):
    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(images.to(device, non_blocking=True))

    return forward


def _bf16(model: nn.Module, input_shape, device: str, batch_size: int, saved_as=None):
    # A copy: channels-last changes how eager float32 convolves too, and eager stays the reference.
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    device_type = torch.device(device).type

    def forward(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return fast(images)

    return forward


def _compile(model: nn.Module, input_shape, device: str, batch_size: int, saved_as=None):
    compiled = torch.compile(model, dynamic=False)
    return _padded(lambda images: compiled(images.to(device, non_blocking=True)), batch_size)


def _openvino(model: nn.Module, input_shape, device: str, batch_size: int, saved_as: Path | None = None):
    if not device.startswith("cpu"):
        raise ValueError(f"openvino runs on the CPU, not {device}")
    import openvino as ov  # imported only by workers that use it (it starts its own threads)

    core = ov.Core()

    def convert():
        # From torch.export's graph: OpenVINO's own tracing goes through the deprecated torch.jit.trace.
        with torch.no_grad():
            exported = torch.export.export(model, (torch.zeros(batch_size, *input_shape),))
        return ov.convert_model(exported)

    if saved_as is None:
        converted = convert()
    else:
        try:
            converted = graph_cache.cached(
                saved_as,
                # float32 weights as converted: compressing them to float16 would change the labels.
                write=lambda folder: ov.save_model(convert(), folder / "model.xml", compress_to_fp16=False),
                read=lambda folder: core.read_model(folder / "model.xml"),
            )
        except OSError as exc:  # a cache that cannot be written costs a conversion, not the mode
            logger.warning("no graph cache at %s (%s); converting in memory", saved_as, exc)
            converted = convert()
    compiled = core.compile_model(
        converted,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()

    def forward(images: torch.Tensor) -> torch.Tensor:
        # share_outputs: no copy of the output; the copy below outlives the next request.
        out = request.infer([images.numpy()], share_inputs=True, share_outputs=True)
        return torch.from_numpy(out[0].copy())

    return _padded(forward, batch_size)


def _padded(forward, batch_size: int):
    """Run a graph built for ``batch_size`` images on any batch: a shard's last, shorter batch
    is padded with zeros (eval mode: the padding cannot change the real images' outputs) rather
    than compiled again; a longer batch goes in slices."""

    def run(images: torch.Tensor) -> torch.Tensor:
        outs = []
        for part in images.split(batch_size):
            count = len(part)
            if count < batch_size:
                part = torch.cat([part, part.new_zeros(batch_size - count, *part.shape[1:])])
            outs.append(forward(part.contiguous())[:count])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    return run


_PREPARE = {"bf16": _bf16, "compile": _compile, "openvino": _openvino}
