"""The in-process benchmarks run as an operator runs them: without the test suite's settings
(the Host allowlist refused the test client's `testserver` until they asked as localhost)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_label_profile_runs_on_a_default_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NST_")}
    args = ["--images", "64", "--shard-size", "64", "--top", "0", "--workers", "0", "--threads", "1"]
    args += ["--model", "resnet10t", "--dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.label_profile", *args],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ratio worker loop / bare:" in done.stdout
