"""The accuracy study (docs/RESULTS.md): does the loop make students beat their teachers on real
data, and does each ingredient of the paper matter?

    .venv/bin/python -m bench.accuracy_study [--seeds 0,1,2] [--generations 3]
        [--unlabeled 20000] [--teacher-steps 1500] [--steps 1000] [--dir study]
        [--threshold 0.3] [--temperature 1.0] [--inference auto]

Fashion-MNIST written as PNG files (100 labeled images per class, an unlabeled pool drawn from
the rest of the training split, the 10,000 test images), registered with a real API under
uvicorn with a real Celery worker (the embedded defaults: SQLite and the SQLAlchemy broker).
For each seed, ``trainer.iterate`` (what ``nst iterate`` runs) trains the supervised teacher and
``--generations`` noisy students; then each ablation runs one generation from that same teacher
with one ingredient changed, so it compares with generation 1 of the full method:

    no-noise          no RandAugment, no dropout, no stochastic depth (crop and flip stay)
    input-noise-only  RandAugment, no dropout or stochastic depth
    model-noise-only  dropout and stochastic depth, no RandAugment
    noised-teacher    the teacher labels with its noise on (``POST /jobs`` noised_teacher)
    hard              hard pseudo labels instead of soft
    no-balance        no per-class balancing
    no-filter         confidence threshold 0 (every pseudo label kept)
    repeat            nothing changed: generation 1 trained again from the same teacher, a
                      control of how far a second run lands from the first (run only when asked)
    eager-labels      the pool labeled in eager float32, the reference, instead of the worker's
                      default mode (OpenVINO on a CPU): what the faster labels move (run only when
                      asked)
    noised-teacher-hard  the noised teacher's labels made hard: whether soft targets are what
                      shields a student from a noised teacher's wrong labels, read against
                      ``hard`` (run only when asked)

With ``--robustness N``, the teacher, every generation and the no-noise student are also measured
under corruptions and FGSM (``nst iterate --robustness``, trainer/robustness.py) on the first N
test images, and the report gives each one's mean corruption error against its own teacher and
against generation 0, and its FGSM accuracy, with a paired test of "more robust than its teacher".

With ``--oracle``, each student architecture is also trained on all 60,000 training labels with
the students' budget (the same steps, and as many images per step as a student's labeled and
pseudo-labeled images together), and the report gives each generation's share of the gap
between its teacher and that oracle: (student - teacher) / (oracle - teacher), top-1.

Everything is saved under ``--dir`` as it finishes; running the command again continues where it
stopped. A seed's results go to ``--results`` (default ``--dir``) as ``seed<N>.json``, with the
budget they were run with, after its generations and again after each ablation (a temporary
file, then a rename: never half written); the report covers every
seed file there that has the same budget. Pointing ``--results`` into the repository lets a
study too long for one sitting run a seed at a time and still report over all of them. A seed
file with its generations but not every ablation asked for is continued in a later sitting even
when ``--dir`` is gone: its teacher is trained again (refused unless it scores what the recorded
one did) and only the missing ablations run. At the end it writes ``results.md`` (tables: mean
and standard deviation over seeds; an ablation's change against its own seed's generation 1,
over the seeds that have run it, named in the table) and ``results.png`` into ``--dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from cli import fashion_mnist
from cli.localstack import LocalStack
from nst import inference
from trainer.config import Recipe, Runtime, ServiceLink, TrainConfig
from trainer.iterate import IterateConfig, iterate
from trainer.robustness import mean_corruption_error

# What each ablation changes in the loop and in the student's training.
ABLATIONS: dict[str, dict] = {
    "no-noise": {"train": {"randaugment": False, "dropout": 0.0, "drop_path": 0.0}},
    "input-noise-only": {"train": {"dropout": 0.0, "drop_path": 0.0}},
    "model-noise-only": {"train": {"randaugment": False}},
    "noised-teacher": {"loop": {"noised_teacher": True}},
    "hard": {"loop": {"soft": False}},
    "no-balance": {"loop": {"balance": False}},
    "no-filter": {"loop": {"threshold": 0.0}},
    "repeat": {},
    "eager-labels": {"loop": {"inference": "eager"}},
    "noised-teacher-hard": {"loop": {"noised_teacher": True, "soft": False}},
}
# Controls and probes, not ingredients (the docstring says what each does): never listed as an
# ablation a seed still lacks.
CONTROLS = ("repeat", "eager-labels", "noised-teacher-hard")


# The ablations whose student's robustness is measured with --robustness: the paper's comparison.
ROBUST_ABLATIONS = ("no-noise",)


def _say(message: str) -> None:
    print(f"[study] {message}", flush=True)


def _all_labeled(client, work: Path, ids: dict, images_dir: Path) -> int:
    """The oracle's dataset, registered once (added to the saved IDs)."""
    return _registered_once(
        client,
        work,
        ids,
        "all_labeled",
        lambda: fashion_mnist.prepare_all_labeled(images_dir),
        name="all-labeled",
        split="train",
    )


def _robustness_set(client, work: Path, ids: dict, images_dir: Path, count: int) -> int:
    """The first ``count`` test images as a labeled dataset, registered once (saved with the IDs)."""
    return _registered_once(
        client,
        work,
        ids,
        f"test_first_{count}",
        lambda: fashion_mnist.prepare_test_subset(images_dir, count),
        name=f"test-first-{count}",
        split="test",
        classes=ids["classes"],
    )


def _registered_once(client, work: Path, ids: dict, key: str, prepare, **fields) -> int:
    """A labeled dataset the study adds to the three of ``_datasets``: its folder written and the
    dataset registered on first use, its ID saved with the others."""
    if key not in ids:
        dataset = client.register_dataset(kind="labeled", path=prepare(), **fields)
        ids[key] = dataset["id"]
        (work / "datasets.json").write_text(json.dumps(ids))
    return ids[key]


def _datasets(client, work: Path, images: dict) -> dict:
    """Register the three datasets once; later runs reuse them (the service state is kept)."""
    saved = work / "datasets.json"
    if saved.exists():
        return json.loads(saved.read_text())
    labeled = client.register_dataset(name="labeled", kind="labeled", split="train", path=images["labeled"])
    pool = client.register_dataset(name="unlabeled", kind="unlabeled", path=images["unlabeled"])
    test = client.register_dataset(
        name="test", kind="labeled", split="test", path=images["test"], classes=labeled["classes"]
    )
    ids = {
        "labeled": labeled["id"],
        "unlabeled": pool["id"],
        "test": test["id"],
        "classes": labeled["classes"],
    }
    saved.write_text(json.dumps(ids))
    return ids


def _main_config(args, client, ids: dict, truth: Path, seed: int) -> IterateConfig:
    train = TrainConfig(
        ServiceLink(manifest_id="", api_url=client.base_url),
        Recipe(
            image_size=28,
            channels=1,
            mean=[0.286],
            std=[0.353],
            steps=args.steps,
            batch_size=args.batch_size,
            pseudo_ratio=args.pseudo_ratio,
            randaugment_magnitude=args.magnitude,
            randaugment_increasing=args.increasing,
            hflip=0.5,  # clothes keep their class when mirrored; the recorded study used it
        ),
        Runtime(workers=args.workers, checkpoint_every=200, progress=False),
    )
    return IterateConfig(
        labeled_dataset_id=ids["labeled"],
        unlabeled_dataset_id=ids["unlabeled"],
        eval_dataset_id=ids["test"],
        generations=args.generations,
        teacher_architecture=args.teacher_arch,
        students=args.students.split(","),
        student_steps=[int(n) for n in args.student_steps.split(",") if n],
        out_dir=str(args.dir / f"seed{seed}" / "main"),
        truth_csv=str(truth),
        teacher_steps=args.teacher_steps,
        train=train,
        seed=seed,
        threshold=args.threshold,
        temperature=args.temperature,
        inference=args.inference,
    )


def _oracle_config(main: IterateConfig, all_labeled_id: int, architecture: str, out: Path) -> IterateConfig:
    """A supervised run of ``architecture`` on every training label, with a student's budget."""
    recipe = main.train.recipe
    per_step = recipe.batch_size + recipe.pseudo_batch_size
    return dataclasses.replace(
        main,
        labeled_dataset_id=all_labeled_id,
        generations=0,
        teacher_architecture=architecture,
        teacher_steps=recipe.steps,
        out_dir=str(out),
        train=dataclasses.replace(main.train, recipe=dataclasses.replace(recipe, batch_size=per_step)),
    )


def _student_archs(args) -> list[str]:
    """The architecture of each generation's student, in order (the last repeats)."""
    students = args.students.split(",")
    return [students[min(g, len(students) - 1)] for g in range(args.generations)]


def _ablation_config(main: IterateConfig, teacher_id: str, name: str, out: Path) -> IterateConfig:
    change = ABLATIONS[name]
    return dataclasses.replace(
        main,
        teacher_id=teacher_id,
        generations=1,
        out_dir=str(out),
        robustness=main.robustness and name in ROBUST_ABLATIONS,
        train=dataclasses.replace(
            main.train, recipe=dataclasses.replace(main.train.recipe, **change.get("train", {}))
        ),
        **change.get("loop", {}),
    )


# How far a teacher trained again may score from the one the seed's generations started from:
# 5 of the 10,000 test images (CPU runs of seed 0's teacher scored 79.92% on three hosts).
TEACHER_AGAIN_TOLERANCE = 0.0005


def _teacher_again(main: IterateConfig, client, first: dict) -> dict:
    """A seed whose generations finished in an earlier sitting, with its checkpoints and service
    state gone since (they live outside the repository): train its teacher again, same seed and
    recipe, for the ablations still to run, and refuse one that is not the same teacher."""
    _say(f"seed {main.seed}: generations measured before; training its teacher again for the ablations")
    # Its own folder: the seed's main folder must stay empty of progress, or the next run would
    # take this teacher for generation 0 and train the generations again.
    out = str(Path(main.out_dir).parent / "teacher-again")
    (row,) = iterate(dataclasses.replace(main, generations=0, out_dir=out), client)
    if abs(row["student_top1"] - first["student_top1"]) > TEACHER_AGAIN_TOLERANCE:
        raise SystemExit(
            f"seed {main.seed}: the teacher trained again scores {row['student_top1']:.4f}, the "
            f"generations started from {first['student_top1']:.4f}: ablations would not compare"
        )
    return row


def _budget(args) -> dict:
    """What a seed's results depend on; seeds are only reported together when these agree."""
    keys = [
        "generations",
        "labeled_per_class",
        "unlabeled",
        "teacher_arch",
        "students",
        "teacher_steps",
        "steps",
        "batch_size",
        "pseudo_ratio",
        "magnitude",
        "increasing",
        "threshold",
        "temperature",
        "inference",
        "student_steps",
    ]
    return {k: getattr(args, k) for k in keys}


# Budget keys added after seeds were already committed: a seed file without one was run with
# the value below (the study's default then), so it still reports beside newer files.
# ("auto" is the worker's default mode, which was eager float32 on a CPU until 2026-12-01 and
# OpenVINO since: the eager-labels control tells them apart.)
_ADDED_BUDGET_KEYS = {
    "threshold": 0.3,
    "increasing": False,
    "temperature": 1.0,
    "inference": "auto",
    "student_steps": "",
}


def _checked(path: Path, budget: dict) -> dict:
    """A seed file's results, refused if they were run with another budget."""
    data = json.loads(path.read_text())
    data["budget"] = {**_ADDED_BUDGET_KEYS, **data.get("budget", {})}
    if data["budget"] != budget:
        raise SystemExit(f"{path} was run with {data['budget']}, not {budget}: use another --results")
    return data


def _load_results(results_dir: Path, budget: dict) -> dict[int, dict]:
    results = {}
    for path in sorted(results_dir.glob("seed*.json")):
        results[int(path.stem.removeprefix("seed"))] = _checked(path, budget)
    return results


def _write_seed(path: Path, result: dict) -> None:
    # Through a temporary file: an interrupted write must not leave half a JSON file behind.
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(path)


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _per_class(client, teacher_id: str) -> list[float]:
    return client.teacher(teacher_id)["metrics"].get("per_class") or []


def _ablation_changes(results: dict, seeds: list[int]) -> dict[str, dict[int, float]]:
    """For each ablation run in at least one seed: seed -> its top-1 minus that seed's full
    generation 1. Paired by seed: a seed that has not run an ablation yet does not count, and
    the seeds' differences in teacher and generation 1 cancel out of the change."""
    changes = {}
    for name in ABLATIONS:
        ran = {
            s: results[s]["ablations"][name]["student_top1"] - results[s]["main"][1]["student_top1"]
            for s in seeds
            if name in results[s]["ablations"]
        }
        if ran:
            changes[name] = ran
    return changes


def _paired_p(changes: list[float]) -> str:
    """The two-sided p of a paired t-test over seeds (each change is an ablation's top-1 minus
    its seed's full generation 1): the one-sample t-test of the changes against 0, which is what
    ``scipy.stats.ttest_rel`` computes. Needs two seeds and changes that are not all equal."""
    if len(changes) < 2 or len(set(changes)) == 1:
        return "-"
    from scipy import stats

    p = stats.ttest_1samp(changes, 0.0).pvalue
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def report(results: dict, classes: list[str], out: Path) -> str:
    """Markdown tables over seeds: generations, ablations, per-class accuracy, timings."""
    seeds = sorted(results)
    mains = [results[s]["main"] for s in seeds]
    generations = min(len(rows) for rows in mains)
    lines = [f"Seeds: {', '.join(map(str, seeds))} (mean ± standard deviation over seeds).", ""]
    for s in seeds:
        missing = [n for n in ABLATIONS if n not in results[s]["ablations"] and n not in CONTROLS]
        if missing:
            lines += [f"Seed {s}: ablations not run yet: {', '.join(missing)}.", ""]
    lines += [
        "| generation | model | test top-1 (%) | test error (%) | pseudo-label acc, all (%) | "
        "pseudo-label acc, kept (%) | pseudo (unique, mean) | pseudo (with copies, mean) | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in range(generations):
        rows = [m[g] for m in mains]
        top1 = [r["student_top1"] for r in rows]
        error = [1 - t for t in top1]
        minutes = [r["seconds"] / 60 for r in rows]
        lines.append(
            f"| {g} | {rows[0]['student_arch']} | {_mean_std(top1)} | {_mean_std(error)} | "
            f"{_mean_std([r.get('pseudo_acc_all') for r in rows])} | "
            f"{_mean_std([r.get('pseudo_acc_kept') for r in rows])} | "
            f"{statistics.mean(r.get('pseudo_unique', 0) for r in rows):,.0f} | "
            f"{statistics.mean(r.get('pseudo_with_copies', 0) for r in rows):,.0f} | "
            f"{statistics.mean(minutes):.1f} |"
        )
    lines += _oracle_lines(results, seeds, generations)
    lines += _robustness_lines(results, seeds, generations)
    teacher_err = [1 - m[0]["student_top1"] for m in mains]
    last_err = [1 - m[generations - 1]["student_top1"] for m in mains]
    reduction = [1 - last / first for first, last in zip(teacher_err, last_err, strict=True)]
    lines += [
        "",
        f"Relative test-error reduction, generation {generations - 1} vs the teacher: "
        f"{_mean_std(reduction)} % (per seed: {', '.join(f'{100 * r:.1f}' for r in reduction)}).",
        "",
        "Ablations, one generation from the same teacher (compare with generation 1); an "
        "ablation's change is taken over the seeds that ran it, against those seeds' generation 1:",
        "",
        "| student | seeds | test top-1 (%) | change vs full method (points) | paired t-test p (two-sided) | "
        "pseudo-label acc, kept (%) |",
        "|---|---|---|---|---|---|",
    ]
    full = [m[1]["student_top1"] for m in mains]
    kept = _mean_std([m[1]["pseudo_acc_kept"] for m in mains])
    lines.append(
        f"| full method (generation 1) | {', '.join(map(str, seeds))} | {_mean_std(full)} | 0 | - | {kept} |"
    )
    for name, ran in _ablation_changes(results, seeds).items():
        top1 = [results[s]["ablations"][name]["student_top1"] for s in ran]
        kept = _mean_std([results[s]["ablations"][name]["pseudo_acc_kept"] for s in ran])
        lines.append(
            f"| {name} | {', '.join(map(str, ran))} | {_mean_std(top1)} | "
            f"{_mean_std(list(ran.values()))} | {_paired_p(list(ran.values()))} | {kept} |"
        )
    final = [results[s]["per_class"].get(str(generations - 1)) for s in seeds]
    first = [results[s]["per_class"].get("0") for s in seeds]
    if all(final) and all(first):
        lines += [
            "",
            f"Per-class test accuracy, teacher vs generation {generations - 1} student:",
            "",
            "| class | teacher (%) | student (%) |",
            "|---|---|---|",
        ]
        for c, name in enumerate(classes):
            lines.append(
                f"| {name} | {_mean_std([p[c] for p in first])} | {_mean_std([p[c] for p in final])} |"
            )
    _plot(results, seeds, generations, out / "results.png")
    return "\n".join(lines) + "\n"


def _oracle_lines(results: dict, seeds: list[int], generations: int) -> list[str]:
    """Each generation's share of the teacher-to-oracle gap, over the seeds with an oracle."""
    ran = [s for s in seeds if results[s].get("oracle")]
    if not ran:
        return []
    lines = [
        "",
        f"The oracle: each student architecture trained on all 60,000 training labels with the "
        f"students' budget (seeds {', '.join(map(str, ran))}); a generation's share of the gap is "
        "(student - teacher) / (oracle - teacher):",
        "",
        "| generation | model | oracle top-1 (%) | student top-1 (%) | share of the gap closed (%) |",
        "|---|---|---|---|---|",
    ]
    for g in range(1, generations):
        rows = [(results[s]["main"][0], results[s]["main"][g]) for s in ran]
        arch = rows[0][1]["student_arch"]
        oracle = [results[s]["oracle"][arch]["student_top1"] for s in ran]
        shares = [
            (student["student_top1"] - teacher["student_top1"]) / (top - teacher["student_top1"])
            for (teacher, student), top in zip(rows, oracle, strict=True)
        ]
        lines.append(
            f"| {g} | {arch} | {_mean_std(oracle)} | {_mean_std([r[1]['student_top1'] for r in rows])} | "
            f"{_mean_std(shares)} |"
        )
    return lines


def _fgsm(robustness: dict) -> list[float]:
    """FGSM top-1 at each epsilon above 0 (epsilon 0 is the clean accuracy again)."""
    return [f["top1"] for f in robustness["fgsm"] if f["epsilon"] > 0]


def _ablation_robustness(results: dict, ran: list[int], name: str) -> dict[int, dict]:
    """Seed -> the ablation student's robustness, for the seeds that measured it."""
    rows = {s: results[s]["ablations"].get(name, {}) for s in ran}
    return {s: row["robustness"] for s, row in rows.items() if "robustness" in row}


def _robustness_lines(results: dict, seeds: list[int], generations: int) -> list[str]:
    """Each model's robustness over the seeds that measured it: mCE against its own teacher (the
    model it learned from) and against generation 0, FGSM accuracy, and in how many seeds it is
    more robust than its teacher, with the paired test of its corruption error against it."""
    ran = [s for s in seeds if all("robustness" in r for r in results[s]["main"][:generations])]
    if not ran:
        return []

    def measured(s: int, g: int) -> dict:
        return results[s]["main"][g]["robustness"]

    # (name, {seed: (its robustness, its teacher's, generation 0's)}); the teacher comes first.
    models = [
        (
            f"generation {g}" + (" (teacher)" if g == 0 else ""),
            {s: (measured(s, g), measured(s, max(g - 1, 0)), measured(s, 0)) for s in ran},
        )
        for g in range(generations)
    ]
    for name in ROBUST_ABLATIONS:
        by_seed = {
            s: (r, measured(s, 0), measured(s, 0))
            for s, r in _ablation_robustness(results, ran, name).items()
        }
        if by_seed:
            models.append((f"{name} (generation 1)", by_seed))
    reference = measured(ran[0], 0)
    epsilons = [f["epsilon"] for f in reference["fgsm"] if f["epsilon"] > 0]
    lines = [
        "",
        f"Robustness on the first {reference['count']:,} test images (seeds {', '.join(map(str, ran))}): "
        "mCE is the corruption error summed over severities relative to a reference model's, averaged "
        "over corruptions (100 = as robust); a model is more robust than its teacher when its mCE against "
        "it is below 100 and its FGSM accuracy is higher at every epsilon. The p is a two-sided "
        "one-sample t-test of (mCE against its teacher - 100) over seeds.",
        "",
        "| model | seeds | clean top-1 (%) | mCE vs its teacher (%) | p | mCE vs generation 0 (%) | "
        + " | ".join(f"FGSM top-1, eps {round(e * 255)}/255 (%)" for e in epsilons)
        + " | more robust than its teacher (seeds) |",
        "|---|---|---|---|---|---|" + "---|" * len(epsilons) + "---|",
    ]
    for position, (name, by_seed) in enumerate(models):
        own = [mean_corruption_error(r, teacher)["mce"] for r, teacher, _ in by_seed.values()]
        first = [mean_corruption_error(r, zero)["mce"] for r, _, zero in by_seed.values()]
        fgsm = [_fgsm(r) for r, _, _ in by_seed.values()]
        more = sum(
            m < 100 and all(a > b for a, b in zip(ours, _fgsm(teacher), strict=True))
            for m, ours, (_, teacher, _) in zip(own, fgsm, by_seed.values(), strict=True)
        )
        is_teacher = position == 0
        lines.append(
            f"| {name} | {', '.join(map(str, by_seed))} | "
            f"{_mean_std([r['clean'] for r, _, _ in by_seed.values()])} | "
            + ("- | - | " if is_teacher else f"{_mean_plain(own)} | {_paired_p([m - 100 for m in own])} | ")
            + f"{_mean_plain(first)} | "
            + " | ".join(_mean_std([f[i] for f in fgsm]) for i in range(len(epsilons)))
            + (" | - |" if is_teacher else f" | {more} of {len(own)} |")
        )
    return lines + _robustness_against_noise(results, ran, epsilons)


def _robustness_against_noise(results: dict, ran: list[int], epsilons: list[float]) -> list[str]:
    """The paper's question, paired by seed: is the ablation's student less robust than the full
    method's generation 1 from the same teacher? Changes in mCE against generation 0 and in FGSM
    accuracy, each with a two-sided paired t-test."""
    lines = []
    for name in ROBUST_ABLATIONS:
        measured = _ablation_robustness(results, ran, name)
        if not measured:
            continue
        mce, fgsm = [], []
        for s, ablation in measured.items():
            zero, full = results[s]["main"][0]["robustness"], results[s]["main"][1]["robustness"]
            mce.append(
                mean_corruption_error(ablation, zero)["mce"] - mean_corruption_error(full, zero)["mce"]
            )
            fgsm.append([a - f for a, f in zip(_fgsm(ablation), _fgsm(full), strict=True)])
        cells = [f"{_mean_plain(mce)} | {_paired_p(mce)}"]
        cells += [
            f"{_mean_std([f[i] for f in fgsm])} | {_paired_p([f[i] for f in fgsm])}"
            for i in range(len(epsilons))
        ]
        lines += [
            "",
            f"{name} against the full method's generation 1, same teacher (seeds "
            f"{', '.join(map(str, measured))}; a positive mCE change is less robust to corruptions):",
            "",
            "| change in | mCE vs generation 0 (points) | p | "
            + " | ".join(f"FGSM top-1, eps {round(e * 255)}/255 (points) | p" for e in epsilons)
            + " |",
            "|---|---|---|" + "---|---|" * len(epsilons),
            f"| {name} - full generation 1 | " + " | ".join(cells) + " |",
        ]
    return lines


def _mean_plain(values: list[float]) -> str:
    """Mean ± sd of values already in percent (``_mean_std`` takes fractions)."""
    return _mean_std([v / 100 for v in values])


def _plot(results: dict, seeds: list[int], generations: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in seeds:
        rows = results[s]["main"][:generations]
        left.plot(range(generations), [100 * r["student_top1"] for r in rows], marker="o", label=f"seed {s}")
    left.set_xlabel("generation (0 = supervised teacher)")
    left.set_ylabel("test top-1 (%)")
    left.set_xticks(range(generations))
    left.grid(alpha=0.3)
    left.legend()
    left.set_title("Noisy students per generation")
    # Changes against the same seed's generation 1, over the seeds that ran each ablation (their
    # count under the name when not all did). An ablation run nowhere gets no bar: an empty one
    # would read as a measured zero.
    changes = _ablation_changes(results, seeds)
    names = [
        n if len(ran) == len(seeds) else f"{n}\n({len(ran)} of {len(seeds)} seeds)"
        for n, ran in changes.items()
    ]
    values = [[100 * v for v in ran.values()] for ran in changes.values()]
    right.bar(
        names,
        [statistics.mean(v) for v in values],
        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values],
        capsize=4,
        color="tab:gray",
    )
    for x, v in enumerate(values):
        right.scatter([x] * len(v), v, color="k", s=12, zorder=3)
    right.axhline(0, color="k", lw=0.8)
    right.set_ylabel("change vs full generation 1 (points)")
    right.set_title("Ablations (one generation, same teacher)")
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _oracles(args, client, ids: dict, images_dir: Path, main_cfg, result: dict, saved: Path) -> None:
    """Train the oracle of each student architecture the seed lacks; saved after each."""
    all_labeled_id = _all_labeled(client, args.dir, ids, images_dir)
    oracle = result.setdefault("oracle", {})
    for arch in dict.fromkeys(_student_archs(args)):
        if arch in oracle:
            continue
        out = args.dir / f"seed{main_cfg.seed}" / f"oracle-{arch}"
        _say(f"seed {main_cfg.seed}: oracle {arch} on all training labels -> {out}")
        (row,) = iterate(_oracle_config(main_cfg, all_labeled_id, arch, out), client)
        oracle[arch] = {"student_top1": row["student_top1"], "seconds": row["seconds"]}
        _write_seed(saved, result)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("study"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--labeled-per-class", type=int, default=100)
    parser.add_argument("--unlabeled", type=int, default=20000)
    parser.add_argument("--teacher-arch", default="regnetx_002")
    parser.add_argument("--students", default="regnetx_004")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per student")
    parser.add_argument(
        "--student-steps",
        default=_ADDED_BUDGET_KEYS["student_steps"],
        help="comma-separated steps per generation, the last repeating (default: --steps for each)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="labeled images per step")
    parser.add_argument("--pseudo-ratio", type=float, default=3.0)
    parser.add_argument("--magnitude", type=int, default=None, help="RandAugment magnitude")
    parser.add_argument(
        "--increasing",
        action="store_true",
        help="RandAugment's ops whose strength rises with the magnitude (timm's inc1)",
    )
    parser.add_argument(
        "--threshold", type=float, default=_ADDED_BUDGET_KEYS["threshold"], help="confidence threshold"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=_ADDED_BUDGET_KEYS["temperature"],
        help="softmax temperature of the soft pseudo labels (below 1: sharper)",
    )
    parser.add_argument(
        "--inference",
        choices=inference.SETTINGS,
        default=_ADDED_BUDGET_KEYS["inference"],
        help="how the teacher labels the pool (auto: the worker's default; eager: the reference)",
    )
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes (trainer and worker)")
    parser.add_argument(
        "--results", type=Path, default=None, help="where each finished seed's JSON goes (default: --dir)"
    )
    parser.add_argument(
        "--ablations",
        default=",".join(n for n in ABLATIONS if n not in CONTROLS),
        help="comma-separated; empty: none",
    )
    parser.add_argument(
        "--oracle", action="store_true", help="also train each student architecture on all 60,000 labels"
    )
    parser.add_argument(
        "--robustness",
        type=int,
        default=0,
        metavar="N",
        help="also measure the teacher, each generation and the no-noise student under corruptions "
        "and FGSM on the first N test images (0: not)",
    )
    return parser


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    args.dir = args.dir.resolve()
    ablations = [a for a in args.ablations.split(",") if a]
    unknown = set(ablations) - set(ABLATIONS)
    if unknown:
        parser.error(f"--ablations: unknown {sorted(unknown)}; choose from {sorted(ABLATIONS)}")
    if args.oracle and args.student_steps:
        parser.error("--oracle: trains each architecture for --steps, not per-generation --student-steps")

    started = time.perf_counter()
    images_dir = args.dir / "images"
    _say(f"writing Fashion-MNIST PNGs into {images_dir} (skipped when there)")
    paths = fashion_mnist.prepare(
        images_dir, per_class=args.labeled_per_class, unlabeled=args.unlabeled, seed=0
    )
    truth = images_dir / f"unlabeled-{fashion_mnist.TRUTH_FILE}"
    env = {
        "NST_DATA_DIR": str(args.dir / "nst"),
        "NST_DATA_ROOTS": str(images_dir),
        "NST_DECODE_WORKERS": str(args.workers),
        "HF_HUB_OFFLINE": "1",
    }
    # A seed's results are written whole when it finishes, to --results (which may live in the
    # repository), so a study can run one seed per sitting and report over all of them.
    results_dir = (args.results or args.dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    budget = _budget(args)
    with LocalStack(args.dir / "logs", env) as stack:
        client = stack.start_api()
        stack.start_worker()
        ids = _datasets(client, args.dir, paths)
        robustness_set = None
        if args.robustness:
            robustness_set = _robustness_set(client, args.dir, ids, images_dir, args.robustness)
        for seed in map(int, args.seeds.split(",")):
            saved = results_dir / f"seed{seed}.json"
            result = _checked(saved, budget) if saved.exists() else None
            main_cfg = _main_config(args, client, ids, truth, seed)
            if robustness_set is not None:
                main_cfg = dataclasses.replace(
                    main_cfg, robustness=True, robustness_dataset_id=robustness_set
                )
            if result and set(ablations) <= set(result["ablations"]):
                _say(f"seed {seed}: generations and ablations done before ({saved})")
                if args.oracle:
                    _oracles(args, client, ids, images_dir, main_cfg, result, saved)
                continue
            if result and not Path(main_cfg.out_dir, "iterate.json").exists():
                again = _teacher_again(main_cfg, client, result["main"][0])
                result.setdefault("teacher_again_top1", []).append(again["student_top1"])
                teacher_id = again["student"]
            else:
                _say(f"seed {seed}: teacher and {args.generations} generation(s) -> {main_cfg.out_dir}")
                rows = iterate(main_cfg, client)
                result = {
                    "main": rows,
                    "ablations": (result or {}).get("ablations", {}),
                    "per_class": {str(r["generation"]): _per_class(client, r["student"]) for r in rows},
                    "budget": budget,
                }
                teacher_id = rows[0]["student"]
            # Written after the generations and again after each ablation, so a sitting that ends
            # mid-seed still leaves what it measured (the next run adds the ablations it lacks).
            _write_seed(saved, result)
            for name in ablations:
                if name in result["ablations"]:
                    continue
                out = args.dir / f"seed{seed}" / name
                _say(f"seed {seed}: ablation {name} -> {out}")
                ablation_rows = iterate(_ablation_config(main_cfg, teacher_id, name, out), client)
                result["ablations"][name] = ablation_rows[-1]
                _write_seed(saved, result)
            if args.oracle:
                _oracles(args, client, ids, images_dir, main_cfg, result, saved)
    results = _load_results(results_dir, budget)
    text = report(results, ids["classes"], args.dir)
    (args.dir / "results.md").write_text(text)
    (args.dir / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    _say(f"done in {(time.perf_counter() - started) / 60:.1f} min; {args.dir / 'results.md'}, results.png")


if __name__ == "__main__":
    main()
