"""The teacher-to-student loop (docs/METHOD.md step 6), driven entirely through the HTTP API:
label the pool with the teacher, read the stats, build the manifest, train the student,
register it, and go again with the student as the teacher.

Progress is saved after every generation in ``out_dir/iterate.json``; running the same command
again continues from the last finished generation.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nst import atomic, inference
from nst.client import Client, NotFound
from nst.progress import wait_with_progress
from nst.states import JobState
from trainer.config import MAX_SEED, Lineage, RecipeError, ServiceLink, TrainConfig
from trainer.report import plot_generations, write_table


def _operational(default):
    """A setting that may change between a run and its continuation: how many generations,
    where things are written, how the work is spread over processes."""
    return field(default=default, metadata={"operational": True})


def _first_teacher_setting(default):
    """How the first teacher is made: no longer part of the recipe once generation 0 is recorded."""
    return field(default=default, metadata={"first_teacher": True})


@dataclass
class IterateConfig:
    labeled_dataset_id: int
    unlabeled_dataset_id: int
    eval_dataset_id: int | None = None
    generations: int = _operational(2)
    teacher_id: str | None = _first_teacher_setting(None)  # None: train one on the labeled data
    teacher_architecture: str = _first_teacher_setting("resnet18")
    students: list[str] = field(default_factory=lambda: ["resnet18"])
    # Training steps per generation, the last repeating; empty: the template's steps for every student.
    student_steps: list[int] = field(default_factory=list)
    out_dir: str = _operational("runs/iterate")
    truth_csv: str | None = _operational(None)  # path,label of the unlabeled images, to score pseudo labels
    probe_dataset_id: int | None = _operational(None)  # labeled, held out: each teacher labels it too
    robustness: bool = _operational(False)  # corruption and FGSM accuracy per generation
    robustness_dataset_id: int | None = _operational(None)  # labeled; None: the eval dataset
    # manifest
    threshold: float = 0.3
    soft: bool = True
    balance: bool = True
    temperature: float = 1.0
    target_per_class: int | None = None
    # labeling
    inference: str = "auto"  # how the teacher runs (nst.inference.SETTINGS)
    noised_teacher: bool = False  # the paper's ablation: the teacher labels with its noise on
    label_batch_size: int = _operational(256)
    shard_size: int = _operational(2000)
    # training: a template for every model (its recipe compared, the rest operational)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ServiceLink(manifest_id="")))
    teacher_steps: int | None = _first_teacher_setting(None)  # None: the template's steps
    seed: int = 0

    def check(self) -> None:
        """Raise RecipeError for a setting the loop would otherwise fail on only once it is under
        way: a model is built only when its generation starts, after the pool is labeled."""
        import timm

        architectures = {"students": self.students}
        if self.teacher_id is None:
            architectures["teacher_architecture"] = [self.teacher_architecture]
        for name, models in architectures.items():
            unknown = [model for model in models if not timm.is_model(model)]
            if unknown:
                raise RecipeError(name, f"{', '.join(map(repr, unknown))}: not a timm model name")
        if self.inference not in inference.SETTINGS:
            modes = ", ".join(inference.SETTINGS)
            raise RecipeError("inference", f"{self.inference!r} is not one of {modes}")
        if self.generations < 0:
            raise RecipeError("generations", f"must be 0 or more, not {self.generations}")
        if self.teacher_steps is not None and self.teacher_steps < 1:
            raise RecipeError("teacher_steps", f"must be 1 or more, not {self.teacher_steps}")
        if any(steps < 1 for steps in self.student_steps):
            raise RecipeError("student_steps", f"each must be 1 or more, not {self.student_steps}")
        if not 0 <= self.seed <= MAX_SEED - self.generations:  # generation g trains with seed + g
            raise RecipeError("seed", f"must be from 0 to {MAX_SEED - self.generations}, not {self.seed}")

    def student_for(self, generation: int) -> str:
        return self.students[min(generation - 1, len(self.students) - 1)]

    def steps_for(self, generation: int) -> int:
        return _per_generation(self.student_steps, generation) or self.train.recipe.steps


def _say(message: str) -> None:
    print(f"[nst iterate] {message}", flush=True)


def _state_path(cfg: IterateConfig) -> Path:
    return Path(cfg.out_dir) / "iterate.json"


# What the loop sets for every model it trains, whatever the template holds (its own settings
# say what): neither compared between runs nor options of `nst iterate`.
SET_PER_MODEL = frozenset(
    {"architecture", "seed", "out_dir", "resume", "manifest_id", "eval_dataset_id", "register"}
    | {f.name for f in dataclasses.fields(Lineage)}
)


class RecipeChanged(ValueError):
    """The out_dir holds generations trained with other settings than those asked for now."""


class JobEnded(RuntimeError):
    """A labeling job the loop waited for ended failed or cancelled; the same command, run again,
    starts a new one."""


class OutDirBusy(RuntimeError):
    """Another ``nst iterate`` is running on the same out_dir."""


def _config_dict(cfg: IterateConfig) -> dict:
    """The loop's settings and the template's recipe, as iterate.json records them."""
    config = dataclasses.asdict(cfg)
    recipe = config["train"]["recipe"]
    if recipe["pretrained_path"]:  # the same file, named from another directory, is the same
        recipe["pretrained_path"] = str(Path(recipe["pretrained_path"]).resolve())
    config["train"] = {name: value for name, value in recipe.items() if name not in SET_PER_MODEL}
    # JSON has no tuples: what is compared is what a saved file would hold.
    return json.loads(json.dumps(config))


def _marked(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(IterateConfig) if f.metadata.get(kind)}


def _per_generation(values: list, generation: int):
    """Generation ``generation``'s entry of a per-generation list whose last entry repeats."""
    return values[min(generation - 1, len(values) - 1)] if values else None


def _students_used(students: list[str], last_generation: int) -> list[str]:
    return [_per_generation(students, g) for g in range(1, last_generation + 1)]


def _steps_used(config: dict, last_generation: int) -> list[int]:
    """The steps each recorded generation's student trained for (a file written before
    per-generation steps: the template's, for every one)."""
    steps = config.get("student_steps") or []
    return [_per_generation(steps, g) or config["train"]["steps"] for g in range(1, last_generation + 1)]


# Recipe settings added after runs were saved without them, with the value those runs used.
_ADDED_TRAIN_SETTINGS = {"randaugment_increasing": False}


def _recipe_changes(saved: dict, current: dict, last_generation: int | None) -> list[str]:
    """'field: saved -> current' for every recipe setting that differs, given the last recorded
    generation (None: none yet). A setting the saved file does not hold (written by an older
    version) is not compared; students only as far as the recorded generations used them."""
    skip = _marked("operational") | {"train", "students", "student_steps"}
    if last_generation is not None:
        skip |= _marked("first_teacher")
    changes = [
        f"{name}: {saved[name]!r} -> {value!r}"
        for name, value in current.items()
        if name not in skip and name in saved and saved[name] != value
    ]
    if "students" in saved and last_generation:
        used = _students_used(saved["students"], last_generation)
        if used != _students_used(current["students"], last_generation):
            changes.append(f"students: {saved['students']!r} -> {current['students']!r}")
    if last_generation and "steps" in saved.get("train", {}):
        trained, asked = _steps_used(saved, last_generation), _steps_used(current, last_generation)
        if trained != asked:
            changes.append(f"student_steps: {trained!r} -> {asked!r}")
    saved_train = _ADDED_TRAIN_SETTINGS | saved.get("train", {})
    changes += [
        f"train.{name}: {saved_train[name]!r} -> {value!r}"
        for name, value in current["train"].items()
        if name in saved_train and saved_train[name] != value
    ]
    return changes


def _load_rows(cfg: IterateConfig) -> list[dict]:
    """The recorded generations; refused when they were made with another recipe. A file with
    no rows yet marks a first teacher in training (its checkpoints would be resumed)."""
    path = _state_path(cfg)
    if not path.exists():
        return []
    state = json.loads(path.read_text())
    rows = state["rows"]
    last = rows[-1]["generation"] if rows else None
    changes = _recipe_changes(state.get("config", {}), _config_dict(cfg), last)
    if changes:
        raise RecipeChanged(
            f"{path} holds a run made with other settings ({'; '.join(changes)}); "
            "run with the same settings to continue, or choose another out_dir"
        )
    return rows


def _load_state(cfg: IterateConfig) -> dict:
    path = _state_path(cfg)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(cfg: IterateConfig, state: dict) -> None:
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(_state_path(cfg), json.dumps(state, indent=2).encode())


# The jobs a generation starts, recorded in the state under these keys while it is in progress.
JOB_KINDS = ("labeling", "probe")


def _record_job(cfg: IterateConfig, kind: str, record: dict) -> None:
    """The generation in progress's job of ``kind``, so that a resumed run waits for it instead of
    labeling again (the manifest then comes out the same: it is content-addressed)."""
    _write_state(cfg, {**_load_state(cfg), kind: record})


def _save(cfg: IterateConfig, rows: list[dict]) -> None:
    saved = _load_state(cfg)
    state = {"config": _config_dict(cfg), "rows": rows}
    last = rows[-1]["generation"] if rows else -1
    for kind in JOB_KINDS:
        if (record := saved.get(kind)) and record["generation"] > last:
            state[kind] = record  # still in progress
    _write_state(cfg, state)
    out = Path(cfg.out_dir)
    if not rows:
        return
    write_table(rows, out / "generations.md")
    plot_generations(rows, out / "generations.png")


def _train(
    cfg: IterateConfig,
    client: Client,
    *,
    manifest_id: str,
    architecture: str,
    generation: int,
    parent_id: str | None,
    steps: int | None,
) -> dict:
    template, name = cfg.train, f"gen{generation}-{architecture}"
    train_cfg = TrainConfig(
        recipe=dataclasses.replace(
            template.recipe,
            architecture=architecture,
            seed=cfg.seed + generation,
            steps=steps or template.recipe.steps,
        ),
        runtime=dataclasses.replace(template.runtime, out_dir=str(Path(cfg.out_dir) / name), resume=True),
        service=dataclasses.replace(
            template.service, manifest_id=manifest_id, eval_dataset_id=cfg.eval_dataset_id, register=True
        ),
        lineage=Lineage(parent_id=parent_id, generation=generation, name=name),
    )
    from trainer.train import train

    return train(train_cfg, client)


def _first_teacher(cfg: IterateConfig, client: Client) -> dict:
    """Generation 0: a supervised teacher from a manifest of labeled images only."""
    started = time.perf_counter()
    manifest = client.create_manifest(labeled_dataset_ids=[cfg.labeled_dataset_id], job_ids=[], seed=cfg.seed)
    _say(
        f"generation 0: training teacher {cfg.teacher_architecture} on "
        f"{manifest['totals']['labeled']} labeled images"
    )
    result = _train(
        cfg,
        client,
        manifest_id=manifest["id"],
        architecture=cfg.teacher_architecture,
        generation=0,
        parent_id=None,
        steps=cfg.teacher_steps,
    )
    return {
        "generation": 0,
        "teacher": None,
        "student": result["teacher_id"],
        "student_arch": cfg.teacher_architecture,
        "manifest": manifest["id"],
        "labeled": manifest["totals"]["labeled"],
        "pseudo_unique": 0,
        "pseudo_with_copies": 0,
        "pseudo_acc_all": None,
        "pseudo_acc_kept": None,
        "teacher_top1": None,
        "student_top1": result["metrics"].get("top1"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _job(
    cfg: IterateConfig, client: Client, generation: int, teacher_id: str, *, kind: str, dataset_id: int
) -> dict:
    """The generation's job of ``kind`` ("labeling": the pool; "probe"): the one an interrupted
    run started, if it can still finish, else a new one. The creation is recorded before the
    request and the job's ID after it, so a run stopped in between (killed, or told by a 503
    that the job is saved but not yet sent) adopts the job the service kept instead of labeling
    the same images again."""
    options = {
        "batch_size": cfg.label_batch_size,
        "shard_size": cfg.shard_size,
        "inference": cfg.inference,
        "noised_teacher": cfg.noised_teacher and kind == "labeling",
    }
    started = _load_state(cfg).get(kind, {})
    if started.get("generation") == generation and started.get("teacher") == teacher_id:
        if started.get("job") is None:
            job = _adoptable(client, teacher_id, dataset_id, options, after=started.get("after", 0))
        else:
            job = _unfinished_or_done(client, started["job"])
        if job is not None:
            _say(f"generation {generation}: continuing {kind} job {job['id']}")
            _record_job(cfg, kind, {**started, "job": job["id"]})
            return job
    # The newest such job before the request: only one after it can be the request's own.
    before = max((job["id"] for job in client.jobs(teacher_id=teacher_id, dataset_id=dataset_id)), default=0)
    record = {"generation": generation, "teacher": teacher_id, "job": None, "after": before}
    _record_job(cfg, kind, record)
    job = client.create_job(teacher_id=teacher_id, dataset_id=dataset_id, **options)
    _record_job(cfg, kind, {**record, "job": job["id"]})
    return job


def _unfinished_or_done(client: Client, job_id: int) -> dict | None:
    try:
        job = client.job(job_id)
    except NotFound:
        return None
    return None if job["state"] in (JobState.FAILED, JobState.CANCELLED) else job


def _adoptable(client: Client, teacher_id: str, dataset_id: int, options: dict, *, after: int) -> dict | None:
    """The job a stopped run's request created: this teacher's on this dataset, with these
    options, newer than job ``after`` (the newest before the request), that can still finish."""
    matching = [
        job
        for job in client.jobs(teacher_id=teacher_id, dataset_id=dataset_id)
        if job["id"] > after
        and all(job[name] == value for name, value in options.items())
        and job["state"] not in (JobState.FAILED, JobState.CANCELLED)
    ]
    return max(matching, key=lambda job: job["id"], default=None)


def _waited(client: Client, job: dict, what: str) -> dict:
    job = wait_with_progress(client, job)
    if job["state"] != JobState.SUCCEEDED:
        raise JobEnded(
            f"{what} job {job['id']} ended {job['state']}: {job['errors']}; "
            "run the same command again to start a new one"
        )
    return job


def _generation(
    cfg: IterateConfig, client: Client, generation: int, teacher_id: str, truth: dict[str, str] | None
) -> dict:
    started = time.perf_counter()
    teacher = client.teacher(teacher_id)
    _say(f"generation {generation}: labeling the pool with {teacher['name']}")
    job = _job(cfg, client, generation, teacher_id, kind="labeling", dataset_id=cfg.unlabeled_dataset_id)
    job = _waited(client, job, "labeling")
    stats = client.job_stats(job["id"], threshold=cfg.threshold)
    client.job_stats_chart(
        job["id"], Path(cfg.out_dir) / f"gen{generation}-balance.png", threshold=cfg.threshold
    )
    _say(f"generation {generation}: {stats['totals']} (imbalance {stats.get('imbalance_ratio')})")
    manifest = client.create_manifest(
        labeled_dataset_ids=[cfg.labeled_dataset_id],
        job_ids=[job["id"]],
        threshold=cfg.threshold,
        balance=cfg.balance,
        soft=cfg.soft,
        temperature=cfg.temperature,
        target_per_class=cfg.target_per_class,
        seed=cfg.seed,
    )
    architecture = cfg.student_for(generation)
    sizes = _sizes(cfg, teacher, architecture)
    probe = _probe_quality(cfg, client, generation, teacher_id) if cfg.probe_dataset_id is not None else {}
    _say(
        f"generation {generation}: training student {architecture} on manifest "
        f"{manifest['id'][:12]} ({manifest['totals']})"
    )
    result = _train(
        cfg,
        client,
        manifest_id=manifest["id"],
        architecture=architecture,
        generation=generation,
        parent_id=teacher_id,
        steps=cfg.steps_for(generation),
    )
    acc_all, acc_kept = _pseudo_accuracy(client, job, manifest, truth) if truth else (None, None)
    return {
        "generation": generation,
        "teacher": teacher_id,
        "student": result["teacher_id"],
        "student_arch": architecture,
        "student_steps": result["steps"],
        "manifest": manifest["id"],
        "job": job["id"],
        "labeled_in": job["inference_used"],  # how the teacher ran: provenance of the pseudo labels
        "labeled": manifest["totals"]["labeled"],
        "pseudo_unique": manifest["totals"]["pseudo_unique"],
        "pseudo_with_copies": manifest["totals"]["pseudo_with_copies"],
        "pseudo_acc_all": acc_all,
        "pseudo_acc_kept": acc_kept,
        "teacher_top1": teacher["metrics"].get("top1"),
        "student_top1": result["metrics"].get("top1"),
        **sizes,
        **probe,
        "seconds": round(time.perf_counter() - started, 1),
    }


def parameter_count(architecture: str, num_classes: int, channels: int, **model_kwargs) -> int:
    """A timm model's parameters, counted on the meta device: nothing allocated or trained."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(architecture, num_classes=num_classes, in_chans=channels, **model_kwargs)
    return sum(p.numel() for p in model.parameters())


def _sizes(cfg: IterateConfig, teacher: dict, architecture: str) -> dict:
    """Teacher and student parameter counts; a student smaller than its teacher is against the
    paper's advice (equal or larger students), so it is said before training."""
    classes = len(teacher["class_names"])
    teacher_params = parameter_count(
        teacher["architecture"], classes, teacher["channels"], **teacher["model_kwargs"]
    )
    student_params = parameter_count(architecture, classes, cfg.train.recipe.channels)
    if student_params < teacher_params:
        _say(
            f"warning: student {architecture} ({student_params:,} parameters) is smaller than its "
            f"teacher {teacher['architecture']} ({teacher_params:,}); the paper's students are "
            "equal or larger"
        )
    return {"teacher_params": teacher_params, "student_params": student_params}


def _probe_quality(cfg: IterateConfig, client: Client, generation: int, teacher_id: str) -> dict:
    """The teacher labels the probe (a labeled dataset held out from training): how many of its
    labels the run's threshold keeps, and how many of those are right."""
    _say(f"generation {generation}: labeling probe dataset {cfg.probe_dataset_id}")
    job = _job(cfg, client, generation, teacher_id, kind="probe", dataset_id=cfg.probe_dataset_id)
    job = _waited(client, job, "probe labeling")
    (point,) = client.job_quality(job["id"], thresholds=[cfg.threshold])["overall"]
    return {
        "probe_job": job["id"],
        "probe_precision": point["precision"],
        "probe_coverage": point["coverage"],
    }


def _robustness_dataset(cfg: IterateConfig) -> int | None:
    """Where robustness is measured: its own dataset (a smaller split keeps its dozens of passes
    cheap) or the eval dataset."""
    return cfg.eval_dataset_id if cfg.robustness_dataset_id is None else cfg.robustness_dataset_id


def _measure_robustness(cfg: IterateConfig, client: Client, rows: list[dict]) -> None:
    """The last row's model under corruptions and FGSM (``_robustness_dataset``); its mCE is
    relative to the first teacher (generation 0), measured first when it has not been."""
    import torch

    from trainer.evaluate import evaluate_teacher
    from trainer.robustness import mean_corruption_error

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for row in (rows[0], rows[-1]):
        if "robustness" not in row:
            _say(f"generation {row['generation']}: robustness of {row['student'][:12]}")
            row["robustness"] = evaluate_teacher(
                client,
                row["student"],
                _robustness_dataset(cfg),
                device=device,
                num_workers=cfg.train.runtime.workers,
                robust=True,
            )["robustness"]
    for row in (rows[0], rows[-1]):
        mce = mean_corruption_error(row["robustness"], rows[0]["robustness"])["mce"]
        row["mce"] = None if mce is None else round(mce, 1)


def _pseudo_accuracy(
    client: Client, job: dict, manifest: dict, truth: dict[str, str]
) -> tuple[float | None, float | None]:
    """How often the teacher's argmax is right: over the whole pool, and over what the
    manifest kept (weighted by copies, as the student sees it)."""
    classes = manifest["classes"]
    labels = [(lab["uri"], classes[lab["predicted"]]) for lab in client.labels(job["id"])]
    scored = [(uri, name) for uri, name in labels if uri in truth]
    acc_all = sum(truth[u] == n for u, n in scored) / len(scored) if scored else None
    right = total = 0
    for entry in client.manifest_entries(manifest["id"]):
        if entry["source"] != "pseudo" or entry["uri"] not in truth:
            continue
        target = entry["target"]
        predicted = target if isinstance(target, int) else max(range(len(target)), key=target.__getitem__)
        right += entry["copies"] * (classes[predicted] == truth[entry["uri"]])
        total += entry["copies"]
    return acc_all, (right / total if total else None)


def read_truth(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    with open(path, newline="") as handle:
        return {row["path"]: row["label"] for row in csv.DictReader(handle)}


def _teacher_metrics(cfg: IterateConfig, client: Client) -> dict:
    """A given teacher's metrics; one imported without them is evaluated on the eval dataset."""
    metrics = client.teacher(cfg.teacher_id)["metrics"]
    if metrics.get("top1") is None and cfg.eval_dataset_id is not None:
        import torch

        from trainer.evaluate import evaluate_teacher

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _say(f"evaluating teacher {cfg.teacher_id[:12]} on dataset {cfg.eval_dataset_id}")
        metrics = evaluate_teacher(
            client, cfg.teacher_id, cfg.eval_dataset_id, device=device, num_workers=cfg.train.runtime.workers
        )
    return metrics


def iterate(cfg: IterateConfig, client: Client) -> list[dict]:
    cfg.check()
    with _out_dir_lock(cfg):
        return _iterate(cfg, client)


@contextmanager
def _out_dir_lock(cfg: IterateConfig) -> Iterator[None]:
    """One run per out_dir: two would each label the pool and train into the same folders."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "iterate.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirBusy(
                f"another nst iterate is running on {out}; wait for it, or choose another out_dir"
            ) from None
        yield  # the lock goes with the file's closing, and with the process


def _iterate(cfg: IterateConfig, client: Client) -> list[dict]:
    rows = _load_rows(cfg)
    if rows:
        _say(f"continuing after generation {rows[-1]['generation']} ({_state_path(cfg)})")
    truth = read_truth(cfg.truth_csv)
    if not rows:
        if cfg.teacher_id is None:
            _save(cfg, rows)  # the recipe is recorded before the first checkpoint
            rows.append(_first_teacher(cfg, client))
        else:
            metrics = _teacher_metrics(cfg, client)
            rows.append(
                {
                    "generation": 0,
                    "student": cfg.teacher_id,
                    "student_top1": metrics.get("top1"),
                    "teacher": None,
                }
            )
        _save(cfg, rows)
    for generation in range(rows[-1]["generation"] + 1, cfg.generations + 1):
        rows.append(_generation(cfg, client, generation, rows[-1]["student"], truth))
        if cfg.robustness and _robustness_dataset(cfg) is not None:
            _measure_robustness(cfg, client, rows)
        _save(cfg, rows)
        _say(
            f"generation {generation}: student top-1 {rows[-1]['student_top1']} "
            f"(teacher {rows[-1]['teacher_top1']})"
        )
    return rows
