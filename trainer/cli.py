"""Command line for the trainer: one option per ``TrainConfig`` field, so the dataclass stays
the single source of truth (``--dropout 0``, ``--no-randaugment``, ``--drop-path 0`` are the
paper's ablation switches)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from click.core import ParameterSource

from nst import atomic, inference
from nst.client import Client
from trainer.config import Recipe, RecipeError, TrainConfig
from trainer.iterate import SET_PER_MODEL, IterateConfig, JobEnded, OutDirBusy, RecipeChanged, iterate
from trainer.report import format_table

_RENAMED = {"manifest_id": "manifest", "api_url": "api", "api_token": "token"}
_ENV = {"api_url": "NST_API_URL", "api_token": "NST_API_TOKEN"}


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    return hint


class _FiniteFloat(click.ParamType):
    """A float that JSON can carry: ``nan`` and ``inf`` are usage errors, not failed requests."""

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE_FLOAT = _FiniteFloat()

# How the teacher runs when it labels (POST /jobs inference), for nst iterate and nst jobs create.
INFERENCE = click.option(
    "--inference",
    type=click.Choice(inference.SETTINGS),
    default="auto",
    show_default=True,
    help="How the teacher runs when it labels: eager (float32, the reference every other mode is "
    "gated against), bf16, compile, openvino; auto: the worker's default for its device.",
)


def _floats(ctx, param, value):
    if not value or isinstance(value, list):
        return value or None
    return [FINITE_FLOAT.convert(v.strip(), param, ctx) for v in value.split(",")]


def _service(ctx: click.Context, values: dict) -> None:
    """Under `nst --api URL --token T`, the group's service, unless the command was given its own
    --api or --token on its command line (both read NST_API_URL and NST_API_TOKEN)."""
    group = ctx.find_root().obj or {}
    for key, group_key in (("api_url", "api"), ("api_token", "token")):
        if group_key in group and ctx.get_parameter_source(key) is not ParameterSource.COMMANDLINE:
            values[key] = group[group_key]


def _full_ids(values: dict, **kinds: str) -> None:
    """Replace each given ID prefix in ``values`` (``field="teacher"`` or ``"manifest"``) with the
    one whole ID it starts, as `nst teachers list` and `nst manifests list` print them shortened."""
    given = {field: kind for field, kind in kinds.items() if values.get(field)}
    if not given:
        return
    with Client(values["api_url"], token=values["api_token"]) as client:
        for field, kind in given.items():
            values[field] = client.full_id(kind, values[field])


def config_options(command=None, *, exclude: frozenset[str] = frozenset()):
    """Decorate a click command with an option for every TrainConfig field not excluded."""
    if command is None:
        return lambda c: config_options(c, exclude=exclude)
    fields = [
        (field, typing.get_type_hints(part)[field.name])
        for part in TrainConfig.parts().values()
        for field in dataclasses.fields(part)
        if field.name not in exclude
    ]
    for field, hint in reversed(fields):
        decls, kwargs = _option(field, hint)
        command = click.option(*decls, **kwargs)(command)
    return command


def _option(field: dataclasses.Field, hint) -> tuple[list[str], dict]:
    name = _RENAMED.get(field.name, field.name).replace("_", "-")
    base = _base_type(hint)
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    if required:
        default = None
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = field.default
    kwargs = {"default": default, "show_default": True, "required": required, "envvar": _ENV.get(field.name)}
    if base is bool:
        decls = [f"--{name}/--no-{name}"]
    elif typing.get_origin(base) is list:
        decls = [f"--{name}"]
        kwargs.update(type=str, callback=_floats, default=",".join(map(str, default or [])))
    else:
        decls = [f"--{name}"]
        kwargs["type"] = FINITE_FLOAT if base is float else base
    return [*decls, field.name], kwargs


def check_recipe(recipe: Recipe) -> None:
    """Refuse, as a usage error, a recipe that would fail only once training runs (before any
    data is pulled or written)."""
    try:
        recipe.check()
    except RecipeError as error:
        raise click.UsageError(error.as_option()) from None


def _checked(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, refused as a usage error when a setting would fail only once training runs."""
    try:
        cfg.check()
    except RecipeError as error:
        raise click.UsageError(error.as_option()) from None
    return cfg


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A failure the user can act on (a setting, a saved run or dataset that does not fit what was
    asked, a manifest that did not arrive as published) as one Error: line; others stay
    tracebacks."""
    from trainer.data import DatasetMismatch, ManifestMismatch
    from trainer.train import ResumeMismatch

    try:
        yield
    except RecipeError as error:
        raise click.ClickException(error.as_option()) from None
    except (ResumeMismatch, RecipeChanged, ManifestMismatch, DatasetMismatch, JobEnded, OutDirBusy) as error:
        raise click.ClickException(str(error)) from None


@click.command("train")
@config_options
@click.pass_context
def train_command(ctx: click.Context, **values) -> None:
    """Train a noisy student from a manifest (pulled over HTTP; its ID or a unique prefix) and
    register it as a teacher."""
    from trainer.train import train

    _checked(TrainConfig.from_flat(values))  # before any request
    _service(ctx, values)
    _full_ids(values, manifest_id="manifest", parent_id="teacher")
    cfg = TrainConfig.from_flat(values)
    with _one_line_errors():
        result = train(cfg)
    click.echo(json.dumps(result, indent=2))


def _device(ctx, param, value: str):
    """The torch device named (auto: cuda when available, else cpu); one torch cannot parse, or
    a CUDA device this machine lacks, is a usage error before any request."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise click.BadParameter(f"{value!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


@click.command("evaluate")
@click.option("--teacher", "teacher_id", required=True, help="A registered teacher's ID.")
@click.option("--dataset", "dataset_id", type=int, required=True, help="A labeled dataset's ID.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Save the result as JSON.")
@click.option(
    "--robustness",
    "robust",
    is_flag=True,
    help="Also accuracy under common corruptions (5 severities) and FGSM.",
)
@click.option(
    "--reference",
    "reference_id",
    help="With --robustness: the teacher the mean corruption error is relative to.",
)
@click.option(
    "--epsilons",
    default="0,0.00392,0.00784,0.0157,0.0314",
    show_default=True,
    callback=_floats,
    help="FGSM step sizes in [0, 1] pixel units (0 to 8/255 by default).",
)
@click.option(
    "--fit-temperature",
    is_flag=True,
    help="Fit the teacher's softmax temperature on --dataset (a labeled val split) and store it.",
)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="DataLoader processes decoding images.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=_device,
    help="auto: cuda when available, else cpu.",
)
@click.option("--api", "api_url", envvar="NST_API_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--token", "api_token", envvar="NST_API_TOKEN", default=None)
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    teacher_id,
    dataset_id,
    out,
    robust,
    reference_id,
    epsilons,
    fit_temperature,
    batch_size,
    workers,
    device,
    api_url,
    api_token,
) -> None:
    """Top-1, top-5, per-class accuracy, the confusion matrix and calibration of any registered
    teacher (its ID or a unique prefix); optionally its robustness, or the fitting of its
    temperature."""
    from trainer.evaluate import NotAValidationSplit, calibrate_teacher, evaluate_teacher
    from trainer.robustness import mean_corruption_error

    if reference_id and not robust:
        raise click.UsageError("--reference: needs --robustness")
    if fit_temperature and (robust or reference_id):
        raise click.UsageError("--fit-temperature: runs alone (evaluate on the test split separately)")
    if out is not None:
        atomic.check_folder(out)  # before minutes of evaluating
    service = dict(api_url=api_url, api_token=api_token, teacher_id=teacher_id, reference_id=reference_id)
    _service(ctx, service)
    _full_ids(service, teacher_id="teacher", reference_id="teacher")
    api_url, api_token = service["api_url"], service["api_token"]
    teacher_id, reference_id = service["teacher_id"], service["reference_id"]
    options = {
        "device": device,
        "batch_size": batch_size,
        "num_workers": workers,
    }
    with Client(api_url, token=api_token) as client, _one_line_errors():
        if fit_temperature:
            try:
                result = calibrate_teacher(client, teacher_id, dataset_id, **options)
            except NotAValidationSplit as error:
                raise click.UsageError(str(error)) from error
            _echo_calibration(result)
        else:
            result = evaluate_teacher(
                client, teacher_id, dataset_id, robust=robust, epsilons=epsilons or [], **options
            )
            if reference_id:
                reference = evaluate_teacher(
                    client, reference_id, dataset_id, robust=True, epsilons=[], **options
                )
                result["robustness"]["reference"] = {
                    "teacher_id": reference_id,
                    **mean_corruption_error(result["robustness"], reference["robustness"]),
                }
            _echo_evaluation(teacher_id, dataset_id, result)
    if out is not None:
        atomic.write_bytes(out, json.dumps(result, indent=2).encode())
        click.echo(f"wrote {out}", err=True)
        from trainer.calibration import plot_reliability

        diagram = out.with_suffix(".reliability.png")
        plot_reliability(result["calibration"], diagram, f"teacher {teacher_id[:12]}, dataset {dataset_id}")
        click.echo(f"wrote {diagram}", err=True)


def _echo_calibration(result: dict) -> None:
    before, after = result["calibration"]
    click.echo(
        f"temperature {result['temperature']:.4f} fitted on {result['count']} images and stored: "
        f"NLL {result['nll']['before']:.4f} -> {result['nll']['after']:.4f}, "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}"
    )


def _echo_evaluation(teacher_id: str, dataset_id: int, result: dict) -> None:
    width = max(len(name) for name in result["classes"])
    click.echo(f"teacher {teacher_id[:12]} on dataset {dataset_id}: {result['count']} images")
    click.echo(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")
    for name, value in result["per_class"].items():
        click.echo(f"  {name:<{width}}  {'-' if value is None else f'{value:.4f}'}")
    for diagram in result["calibration"]:
        click.echo(
            f"ECE ({len(diagram['bins'])} bins) at T = {diagram['temperature']:.4g}: {diagram['ece']:.4f}"
        )
    robust = result.get("robustness")
    if robust is None:
        return
    for name, accuracies in robust["corruptions"].items():
        click.echo(f"  {name:<16}  " + "  ".join(f"{a:.4f}" for a in accuracies))
    for point in robust["fgsm"]:
        click.echo(f"FGSM epsilon {point['epsilon']:.4f}: top-1 {point['top1']:.4f}")
    reference = robust.get("reference")
    if reference is None:
        click.echo("mCE: give --reference TEACHER_ID to compare the corruption errors with")
    elif reference["mce"] is not None:
        click.echo(f"mCE {reference['mce']:.1f} relative to teacher {reference['teacher_id'][:12]}")


def main() -> None:
    train_command()


@click.command("iterate")
@click.option("--labeled", "labeled_dataset_id", type=int, required=True, help="Labeled train dataset ID.")
@click.option(
    "--unlabeled", "unlabeled_dataset_id", type=int, required=True, help="Unlabeled pool dataset ID."
)
@click.option("--eval", "eval_dataset_id", type=int, help="Labeled test dataset ID.")
@click.option("--generations", default=2, show_default=True)
@click.option("--teacher", "teacher_id", help="Start from this teacher (default: train one).")
@click.option("--teacher-arch", "teacher_architecture", default="resnet18", show_default=True)
@click.option("--teacher-steps", type=int, help="Steps for the first teacher (default --steps).")
@click.option(
    "--students",
    default="resnet18",
    show_default=True,
    help="Comma-separated architectures per generation; the last one repeats.",
)
@click.option(
    "--student-steps",
    default="",
    help="Comma-separated training steps per generation; the last one repeats (default: --steps "
    "for every student).",
)
@click.option("--out", "out_dir", default="runs/iterate", show_default=True)
@click.option("--truth", "truth_csv", help="CSV path,label of the pool, to score pseudo labels.")
@click.option(
    "--probe",
    "probe_dataset_id",
    type=int,
    help="Labeled dataset held out from training: each teacher labels it too, and the table "
    "shows its precision and coverage at --threshold.",
)
@click.option(
    "--robustness/--no-robustness",
    default=False,
    show_default=True,
    help="Per generation, corruption and FGSM accuracy on --eval (or --robustness-on), and mCE "
    "against generation 0.",
)
@click.option(
    "--robustness-on",
    "robustness_dataset_id",
    type=int,
    help="Labeled dataset for --robustness instead of --eval: a smaller split keeps its dozens of "
    "passes per model cheap.",
)
@click.option("--threshold", default=0.3, show_default=True)
@click.option("--soft/--hard", default=True, show_default=True)
@click.option("--balance/--no-balance", default=True, show_default=True)
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--target-per-class", type=int)
@INFERENCE
@click.option(
    "--noised-teacher/--clean-teacher",
    default=False,
    show_default=True,
    help="The paper's ablation: the teacher labels the pool with its noise on (RandAugment, "
    "dropout, stochastic depth). The method's teacher is clean.",
)
@click.option("--label-batch-size", default=256, show_default=True)
@click.option("--shard-size", default=2000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@config_options(exclude=SET_PER_MODEL)
@click.pass_context
def iterate_command(ctx: click.Context, **values) -> None:
    """Run the Noisy Student loop for N generations through the service (--teacher: an ID or a
    unique prefix)."""
    _iterate_config(values)  # before any request: a typo in --students would show after generation 0
    _service(ctx, values)
    _full_ids(values, teacher_id="teacher")
    cfg = _iterate_config(values)
    with Client(values["api_url"], token=values["api_token"]) as client, _one_line_errors():
        rows = iterate(cfg, client)
    click.echo(format_table(rows))


def _iterate_config(values: dict) -> IterateConfig:
    """The loop's settings and its training template from the options, every one checked."""
    iterate_fields = {f.name for f in dataclasses.fields(IterateConfig)}
    loop = {k: v for k, v in values.items() if k in iterate_fields}
    train_values = {k: v for k, v in values.items() if k not in iterate_fields}
    loop["students"] = [name.strip() for name in loop["students"].split(",")]
    try:
        loop["student_steps"] = [int(n) for n in loop["student_steps"].split(",") if n.strip()]
    except ValueError:
        raise click.UsageError(
            f"--student-steps: {loop['student_steps']!r} is not a comma-separated list of whole numbers"
        ) from None
    if loop["robustness"] and loop["eval_dataset_id"] is None and loop["robustness_dataset_id"] is None:
        raise click.UsageError("--robustness: needs --eval or --robustness-on, the dataset to measure it on")
    cfg = IterateConfig(**loop, train=_checked(TrainConfig.from_flat({"manifest_id": "", **train_values})))
    try:
        cfg.check()
    except RecipeError as error:
        option = _ITERATE_OPTIONS.get(error.field, error.field.replace("_", "-"))
        raise click.UsageError(f"--{option}: {error.problem}") from None
    return cfg


# The loop's options named otherwise than their fields.
_ITERATE_OPTIONS = {"teacher_architecture": "teacher-arch"}
