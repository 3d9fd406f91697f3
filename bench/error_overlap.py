"""Do students copy their teacher's mistakes? Over the checkpoints an accuracy study left in its
``--dir`` (bench/accuracy_study.py), each seed's teacher and the students of the runs named:

    .venv/bin/python -m bench.error_overlap --dir /tmp/study-ns \\
        --runs eager-labels,hard,noised-teacher-hard

For each student, on the study's 10,000 test images: its top-1, how often it agrees with its
teacher, and of the images the teacher gets wrong, the share it gets wrong *the same way* (the
teacher's wrong class) and the share it gets right. A student that learned what the teacher
computes repeats its systematic errors: students of differently made labels (a noised
teacher's, hard ones) that agree with the teacher and repeat its errors equally often learned
the same function. Per seed, then the mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.common import print_table
from nst.checkpoint import load_teacher, read_metadata
from trainer.data import Split
from trainer.evaluate import model_logits


def folder_split(images: Path, classes: list[str]) -> Split:
    """The study's test images (a folder per class), in a fixed order."""
    uris, targets = [], []
    for index, name in enumerate(classes):
        files = sorted((images / name).glob("*.png"))
        uris += [str(f) for f in files]
        targets += [index] * len(files)
    return Split(uris=uris, targets=np.asarray(targets), copies=np.ones(len(uris), dtype=np.int64))


def predictions(checkpoint: Path, split: Split) -> np.ndarray:
    model, metadata = load_teacher(checkpoint)
    return model_logits(model, metadata, split, torch.device("cpu")).argmax(dim=1).numpy()


def _teacher_file(seed_dir: Path) -> Path:
    """Generation 0 of the seed's main run, or the teacher trained again for its ablations."""
    for folder in ("main", "teacher-again"):
        found = sorted((seed_dir / folder).glob("gen0-*/student.safetensors"))
        if found:
            return found[0]
    raise SystemExit(f"{seed_dir}: no teacher checkpoint (main/gen0-* or teacher-again/gen0-*)")


def overlap(teacher: np.ndarray, student: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    wrong = teacher != truth
    return {
        "top1": float((student == truth).mean()),
        "agrees with teacher": float((student == teacher).mean()),
        "teacher's errors repeated": float((student[wrong] == teacher[wrong]).mean()),
        "teacher's errors fixed": float((student[wrong] == truth[wrong]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True, help="an accuracy study's --dir")
    parser.add_argument(
        "--runs", required=True, help="comma-separated: a run folder in each seed (e.g. hard)"
    )
    args = parser.parse_args()
    seeds = sorted(args.dir.glob("seed*"))
    classes = read_metadata(_teacher_file(seeds[0])).class_names  # the models' class order
    split = folder_split(args.dir / "images" / "test", classes)
    truth = split.targets
    runs = args.runs.split(",")
    per_run: dict[str, list[dict]] = {run: [] for run in runs}
    rows = []
    for seed_dir in seeds:
        teacher = predictions(_teacher_file(seed_dir), split)
        rows.append([seed_dir.name, "teacher", f"{100 * (teacher == truth).mean():.2f}", "", "", ""])
        for run in runs:
            (student_file,) = (seed_dir / run).glob("gen1-*/student.safetensors")
            found = overlap(teacher, predictions(student_file, split), truth)
            per_run[run].append(found)
            rows.append([seed_dir.name, run, *(f"{100 * v:.2f}" for v in found.values())])
    header = [
        "seed",
        "model",
        "top-1 (%)",
        "agrees with teacher (%)",
        "teacher's errors repeated (%)",
        "teacher's errors fixed (%)",
    ]
    print_table(header, rows)
    print()
    summary = []
    for run, found in per_run.items():
        cells = []
        for key in found[0]:
            values = [100 * f[key] for f in found]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        summary.append([run, str(len(found)), *cells])
    print_table(["run", "seeds", *header[2:]], summary)


if __name__ == "__main__":
    main()
