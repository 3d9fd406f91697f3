"""The accuracy study's report (bench/accuracy_study.py): the numbers that go into
docs/RESULTS.md, including a study whose seeds have not all run every ablation yet."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

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


def test_the_repeat_control_is_reported_when_run_and_never_missing(tmp_path):
    """``repeat`` trains generation 1 again unchanged: its row says how far a second run lands
    from the first; a seed that has every ablation but it lacks nothing."""
    ingredients = [n for n in accuracy_study.ABLATIONS if n not in accuracy_study.CONTROLS]
    results = {
        0: {
            "main": [_row(0, 0.80), _row(1, 0.84)],
            "ablations": {name: _ablation(0.83) for name in ingredients},
            "per_class": {},
        },
        1: {
            "main": [_row(0, 0.81), _row(1, 0.85)],
            "ablations": {name: _ablation(0.84) for name in ingredients} | {"repeat": _ablation(0.85)},
            "per_class": {},
        },
    }
    text = accuracy_study.report(results, [str(c) for c in range(10)], tmp_path)
    assert "not run yet" not in text
    assert _line(text, "| repeat ")[1:4] == ["1", "85.00", "0.00"]


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


def _robust(clean: float, corrupted: float, fgsm: list[float]) -> dict:
    """A robustness result: every severity of two corruptions at ``corrupted``."""
    return {
        "count": 2000,
        "clean": clean,
        "corruptions": {"gaussian_noise": [corrupted] * 5, "contrast": [corrupted] * 5},
        "fgsm": [
            {"epsilon": e, "top1": t} for e, t in zip((0.0, 1 / 255, 8 / 255), [clean, *fgsm], strict=True)
        ],
    }


def test_robustness_compares_each_model_with_its_own_teacher_over_the_seeds_that_measured_it(tmp_path):
    def seed(errors: tuple[float, float, float], no_noise_error: float) -> dict:
        teacher, first, second = (
            {**_row(g, 0.7 + g / 100), "robustness": _robust(0.7, 1 - e, [0.5 + g / 10, 0.2 + g / 10])}
            for g, e in enumerate(errors)
        )
        no_noise = {**_ablation(0.7), "robustness": _robust(0.7, 1 - no_noise_error, [0.4, 0.1])}
        return {"main": [teacher, first, second], "ablations": {"no-noise": no_noise}, "per_class": {}}

    results = {
        0: seed((0.40, 0.30, 0.24), 0.50),
        1: seed((0.40, 0.32, 0.32), 0.44),
        2: {"main": [_row(0, 0.7), _row(1, 0.71), _row(2, 0.72)], "ablations": {}, "per_class": {}},
    }
    text = accuracy_study.report(results, [str(c) for c in range(10)], tmp_path)
    assert "Robustness on the first 2,000 test images (seeds 0, 1)" in text  # seed 2 measured none
    teacher = _line(text, "| generation 0 (teacher) ")
    assert teacher[1:6] == ["0, 1", "70.00 ± 0.00", "-", "-", "100.00 ± 0.00"]
    # Generation 1 against the teacher: 30/40 and 32/40 of its corruption error, mCE 75 and 80.
    first = _line(text, "| generation 1 ")
    assert first[3] == "77.50 ± 3.54" and first[5] == "77.50 ± 3.54"
    assert first[6:9] == ["60.00 ± 0.00", "30.00 ± 0.00", "2 of 2"]
    # Generation 2 against generation 1 (its teacher): 24/30 = 80 and 32/32 = 100, so one seed
    # is more robust; against generation 0: 60 and 80.
    second = _line(text, "| generation 2 ")
    assert (second[3], second[5], second[-1]) == ("90.00 ± 14.14", "70.00 ± 14.14", "1 of 2")
    # The no-noise student, against the same teacher: 125 and 110, less robust, FGSM lower.
    no_noise = _line(text, "| no-noise (generation 1) ")
    assert (no_noise[1], no_noise[3], no_noise[-1]) == ("0, 1", "117.50 ± 10.61", "0 of 2")
    # One-sample t of (mCE - 100) = 17.5 / (10.61 / sqrt 2) = 2.33 on one degree of freedom.
    assert no_noise[4] == "0.258"
    # Paired with generation 1: mCE against generation 0 125 - 75 and 110 - 80, t = 40 / 10 = 4;
    # FGSM 20 points lower in both seeds at both epsilons (no spread: no test).
    paired = _line(text, "| no-noise - full generation 1 ")
    assert paired[1:] == ["40.00 ± 14.14", "0.156", "-20.00 ± 0.00", "-", "-20.00 ± 0.00", "-"]


def test_with_robustness_only_the_no_noise_ablation_measures_its_student():
    main = IterateConfig(
        labeled_dataset_id=1, unlabeled_dataset_id=2, robustness=True, robustness_dataset_id=7
    )
    for name in accuracy_study.ABLATIONS:
        ablation = accuracy_study._ablation_config(main, "t", name, Path("/tmp/a"))
        assert ablation.robustness == (name == "no-noise") and ablation.robustness_dataset_id == 7
    plain = accuracy_study._ablation_config(
        dataclasses.replace(main, robustness=False), "t", "no-noise", Path("/tmp/a")
    )
    assert not plain.robustness


def test_the_label_mode_and_temperature_are_part_of_a_seeds_budget(tmp_path):
    """``--inference`` and ``--temperature`` reach the loop and the budget: a seed file written
    before they existed reads as the defaults ("auto", 1.0), and one run another way is refused
    rather than reported beside it."""
    parser = accuracy_study._parser()
    default = parser.parse_args([])
    eager = parser.parse_args(["--inference", "eager", "--temperature", "0.5"])
    old_file = tmp_path / "seed0.json"
    budget = accuracy_study._budget(default)
    written_before = {k: v for k, v in budget.items() if k not in ("inference", "temperature")}
    old_file.write_text(json.dumps({"main": [], "ablations": {}, "budget": written_before}))

    assert accuracy_study._checked(old_file, budget)["budget"] == budget
    with pytest.raises(SystemExit, match="'inference': 'auto'"):
        accuracy_study._checked(old_file, accuracy_study._budget(eager))

    client = argparse.Namespace(base_url="http://127.0.0.1:1")
    ids = {"labeled": 1, "unlabeled": 2, "test": 3}
    cfg = accuracy_study._main_config(eager, client, ids, tmp_path / "truth.csv", seed=0)
    assert (cfg.inference, cfg.temperature) == ("eager", 0.5)
    assert accuracy_study._ablation_config(cfg, "t", "no-filter", tmp_path).inference == "eager"
    with pytest.raises(SystemExit):
        parser.parse_args(["--inference", "fast"])
