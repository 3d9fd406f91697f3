"""The in-process benchmarks run as an operator runs them, at a small size: without the test
suite's settings (the Host allowlist refused the test client's `testserver` until they asked as
localhost)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SMALL = {
    "label_profile": ["--images", "64", "--shard-size", "64", "--top", "0", "--workers", "0"]
    + ["--threads", "1", "--model", "resnet10t"],
    "metrics_scrape": ["--labels", "2000", "--history-shards", "100", "--item-errors", "100"],
    "label_store": ["--labels", "5000", "--classes", "20", "--database", "sqlite"],
    "dataset_register": ["--files", "2500", "--repeat", "1", "--database", "sqlite"],
}
PRINTS = {
    "label_profile": "ratio worker loop / bare:",
    "metrics_scrape": "target:",
    "label_store": "ratio",
    "dataset_register": "| scan |",
}


@pytest.mark.parametrize("bench", sorted(SMALL))
def test_an_in_process_benchmark_runs_on_a_default_environment(tmp_path, bench):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NST_")}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *SMALL[bench]],
        env={**env, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert PRINTS[bench] in done.stdout


def test_the_labeling_benchmark_holds_the_service_to_the_model_alone(tmp_path):
    """The baseline a GPU run uses (--device cuda), here on the CPU: the same teacher prepared in
    the job's mode forwards the images decoded beforehand; the row names the mode both ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NST_")}
    args = ["--models", "resnet10t", "--sizes", "28", "--images", "128", "--modes", "eager"]
    args += ["--repeats", "1", "--baseline", "model-alone", "--workers", "0", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.label_throughput", *args],
        env={**env, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| model alone (cpu, same mode) img/s |" in done.stdout
    assert "| resnet10t | 28 px | 128 | eager |" in done.stdout  # no "(ran ...)": both ran eager
    assert "target: ratio >= 0.9 on a GPU" in done.stdout
