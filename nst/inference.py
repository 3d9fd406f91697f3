"""How a teacher may run when it labels: the API's contract (a job's ``inference``), so the
service, the workers and the command line offer the same modes."""

from __future__ import annotations

# eager float32 is the reference every other mode is gated against (docs/BENCHMARKS.md).
MODES = ("eager", "bf16", "compile", "openvino")
# What a job may ask for: a mode, or auto (the worker's default for its device).
SETTINGS = ("auto", *MODES)
# A job's images per forward pass unless it says otherwise; a teacher is prepared for it ahead of
# its first job (workers/tasks.py).
DEFAULT_BATCH_SIZE = 64
