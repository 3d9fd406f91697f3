"""The accuracy study's report (bench/accuracy_study.py): the numbers that go into
docs/RESULTS.md, including a study whose seeds have not all run every ablation yet."""

import argparse
from pathlib import Path

from bench import accuracy_study
from trainer.config import Recipe, Runtime, ServiceLink, TrainConfig
from trainer.iterate import IterateConfig


def _row(generation: int, top1: float) -> dict:
    return {
        "generation": generation,
        "student_arch": "regnetx_002" if generation == 0 else "regnetx_004",
        "student_top1": top1,
        "seconds": 60.0,
        "pseudo_acc_all": None if generation == 0 else 0.80,
        "pseudo_acc_kept": None if generation == 0 else 0.83,
        "pseudo_unique": 0 if generation == 0 else 900,
        "pseudo_with_copies": 0 if generation == 0 else 1000,
    }


def _ablation(top1: float) -> dict:
    return {**_row(1, top1), "pseudo_acc_kept": 0.81}


def _line(text: str, start: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(start)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_ablations_are_paired_with_their_own_seed_over_the_seeds_that_ran_them(tmp_path):
    results = {
        0: {
            "main": [_row(0, 0.80), _row(1, 0.84)],
            "ablations": {"no-noise": _ablation(0.83), "hard": _ablation(0.845)},
            "per_class": {},
        },
        # A better seed that has run only no-noise so far.
        1: {
            "main": [_row(0, 0.82), _row(1, 0.86)],
            "ablations": {"no-noise": _ablation(0.84)},
            "per_class": {},
        },
    }
    text = accuracy_study.report(results, [str(c) for c in range(10)], tmp_path)

    # Both seeds lose 1 and 2 points against their own generation 1: -1.50 ± 0.71, whatever the
    # seeds' difference in level (a comparison of means would mix it in).
    assert _line(text, "| no-noise ")[1:4] == ["0, 1", "83.50 ± 0.71", "-1.50 ± 0.71"]
    # Paired over the two seeds: t = -1.5 / (0.71 / sqrt 2) = -3 on one degree of freedom.
    assert _line(text, "| no-noise ")[4] == "0.205"
    # Hard labels ran in seed 0 only: its own change, not one against the mean over both seeds.
    assert _line(text, "| hard ")[1:5] == ["0", "84.50", "0.50", "-"]  # one seed: no test
    assert _line(text, "| full method ")[1:3] == ["0, 1", "85.00 ± 1.41"]
    # Never run anywhere: no row, which would read as a measured result.
    assert not [line for line in text.splitlines() if line.startswith(("| no-balance", "| no-filter"))]
    noise_split = "input-noise-only, model-noise-only, noised-teacher"
    assert f"Seed 0: ablations not run yet: {noise_split}, no-balance, no-filter." in text
    assert f"Seed 1: ablations not run yet: {noise_split}, hard, no-balance, no-filter." in text
    # Error 20% -> 16% and 18% -> 14%: 20.0% and 22.2% lower.
    assert "(per seed: 20.0, 22.2)" in text
    assert (tmp_path / "results.png").stat().st_size > 0


def test_each_generation_reports_its_share_of_the_gap_to_the_oracle(tmp_path):
    results = {
        0: {
            "main": [_row(0, 0.70), _row(1, 0.76)],
            "ablations": {},
            "per_class": {},
            "oracle": {"regnetx_004": {"student_top1": 0.80, "seconds": 60.0}},
        },
        1: {"main": [_row(0, 0.72), _row(1, 0.80)], "ablations": {}, "per_class": {}},
    }
    text = accuracy_study.report(results, [str(c) for c in range(10)], tmp_path)
    # Seed 0 alone has an oracle: (76 - 70) / (80 - 70) = 60% of the gap.
    assert "(seeds 0)" in text
    assert _line(text, "| 1 | regnetx_004 | 80.00 ")[2:] == ["80.00", "76.00", "60.00"]


def test_without_an_oracle_there_is_no_gap_table(tmp_path):
    results = {0: {"main": [_row(0, 0.70), _row(1, 0.76)], "ablations": {}, "per_class": {}}}
    text = accuracy_study.report(results, [str(c) for c in range(10)], tmp_path)
    assert "oracle" not in text


def test_the_oracle_trains_each_student_architecture_with_a_students_images_per_step():
    main = IterateConfig(
        labeled_dataset_id=1,
        unlabeled_dataset_id=2,
        generations=3,
        train=TrainConfig(
            ServiceLink(manifest_id=""), Recipe(steps=1000, batch_size=32, pseudo_ratio=3.0), Runtime()
        ),
    )
    oracle = accuracy_study._oracle_config(main, 9, "regnetx_006", Path("/tmp/oracle"))
    assert (oracle.labeled_dataset_id, oracle.generations) == (9, 0)
    assert oracle.teacher_architecture == "regnetx_006"
    assert (oracle.teacher_steps, oracle.train.recipe.batch_size) == (1000, 128)
    args = argparse.Namespace(students="regnetx_004,regnetx_006", generations=3)
    assert accuracy_study._student_archs(args) == ["regnetx_004", "regnetx_006", "regnetx_006"]
