"""The ``nst`` command: run the service's processes and drive it over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import httpx

from nst.client import Client, NstError, UnknownId
from nst.config import SettingsError
from nst.manifest_file import ManifestMismatch
from nst.progress import wait_with_progress, workers_online
from nst.states import JobState, ShardState
from trainer.cli import FINITE_FLOAT, INFERENCE


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["api"], token=ctx.obj["token"])


def _full_teacher_id(client: Client, given: str) -> str:
    """A teacher's ID from a unique prefix of it, as `nst teachers list` prints them."""
    return client.full_id("teacher", given)


def _print(value) -> None:
    click.echo(json.dumps(value, indent=2))


def _wrote(path: Path) -> None:
    # To stderr: the file may be /dev/stdout, whose readers want only its contents.
    if path != STDOUT:
        click.echo(f"wrote {path}", err=True)


STDOUT = Path("-")
# ``-`` is standard output, written as it arrives (not checked first, as a file is).
EXPORT_OUT = click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="The file to write, put in place only once the whole export has arrived; - for standard output.",
)


def _export_target(out: Path):
    return click.open_file("-", "wb") if out == STDOUT else out


class _Commands(click.Group):
    """The ``nst`` group: a command that fails for a reason the user can act on (the service's
    answer, an unreachable service, a download that is not what was asked for, a setting, a wait
    that ran out, a missing folder) prints one line naming it and exits 1; a traceback is left
    for bugs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (NstError, UnknownId, ManifestMismatch, SettingsError, TimeoutError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach the service at {_url_of(exc)}: {exc}") from None


def _url_of(exc: httpx.TransportError) -> str:
    try:
        return str(exc.request.url.copy_with(query=None))
    except RuntimeError:  # an error raised before any request was made
        return "its URL"


@click.group(cls=_Commands)
@click.option(
    "--api",
    envvar="NST_API_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Service URL (env NST_API_URL).",
)
@click.option("--token", envvar="NST_API_TOKEN", default=None, help="API token (env NST_API_TOKEN).")
@click.pass_context
def cli(ctx: click.Context, api: str, token: str | None) -> None:
    """nst: Noisy Student pseudo-label service."""
    ctx.obj = {"api": api, "token": token}


# --- processes ------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration up to the newest."""
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from service.core.migrate import upgrade_head

    try:
        upgrade_head()
    except DBAPIError as exc:  # unreachable, refused, or a migration the data did not allow
        problem = f"the database (NST_DATABASE_URL) refused the upgrade: {exc.orig}"
        raise click.ClickException(problem) from None
    except CommandError as exc:  # e.g. a database migrated by a newer nst than this one
        raise click.ClickException(f"the database (NST_DATABASE_URL) cannot be upgraded: {exc}") from None
    click.echo("database is at the newest revision")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="API processes on the one port: a manifest's Parquet build or a large export holds one "
    "process's interpreter while it runs, so more processes keep the others answering.",
)
def api(host: str, port: int, workers: int) -> None:
    """Serve the REST API (applies migrations first; processes that start together apply them once)."""
    import tempfile

    import uvicorn

    def serve() -> None:
        uvicorn.run("service.main:app", host=host, port=port, log_level="info", workers=workers)

    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        serve()
        return
    # A scrape of /metrics reaches one of the processes: prometheus_client's multiprocess mode
    # has each count its requests in a file of this folder, and a scrape sums them all.
    with tempfile.TemporaryDirectory(prefix="nst-api-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        serve()


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--concurrency",
    "-c",
    default=1,
    show_default=True,
    help="Pool processes; on a GPU machine one per GPU: process i labels on GPU i "
    "(NST_WORKER_DEVICE=cuda:N pins every process to GPU N).",
)
@click.pass_context
def worker(ctx: click.Context, concurrency: int) -> None:
    """Run a Celery labeling worker (extra arguments go to `celery worker`)."""
    from cli.localstack import celery_worker_args

    os.execv(sys.executable, celery_worker_args(concurrency, *ctx.args))


# --- datasets -------------------------------------------------------------------------------


@cli.group()
def datasets() -> None:
    """Register and inspect datasets."""


@datasets.command("register")
@click.argument("path")
@click.option("--name", required=True)
@click.option("--kind", type=click.Choice(["labeled", "unlabeled"]), required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]))
@click.option("--classes", help="Comma-separated class order (labeled data).")
@click.pass_context
def datasets_register(ctx, path, name, kind, split, classes) -> None:
    """Register a folder or list file (a path under a data root, or a URL under a root prefix)."""
    if Path(path).exists():  # a path the user sees from here means the same on the service's host
        path = str(Path(path).resolve())
    with _client(ctx) as client:
        _print(
            client.register_dataset(
                name=name, kind=kind, path=path, split=split, classes=classes.split(",") if classes else None
            )
        )


@datasets.command("list")
@click.pass_context
def datasets_list(ctx) -> None:
    """Every dataset: ID, kind, split, item count and name."""
    with _client(ctx) as client:
        for d in client.datasets():
            click.echo(
                f"{d['id']:>5}  {d['kind']:<9} {d['split'] or '-':<5} {d['item_count']:>8}  {d['name']}"
            )


@datasets.command("show")
@click.argument("dataset_id", type=int)
@click.pass_context
def datasets_show(ctx, dataset_id) -> None:
    """A dataset as JSON: its source, classes and item count."""
    with _client(ctx) as client:
        _print(client.dataset(dataset_id))


@datasets.command("items")
@click.argument("dataset_id", type=int)
@click.option("--limit", type=int, help="Print at most this many items.")
@click.pass_context
def datasets_items(ctx, dataset_id, limit) -> None:
    """The dataset's items in scan order: ID, ordinal, label (if labeled) and URI."""
    with _client(ctx) as client:
        for n, item in enumerate(client.items(dataset_id)):
            if limit is not None and n >= limit:
                break
            label = "-" if item.get("label") is None else item["label"]
            click.echo(f"{item['id']:>9}  {item['ordinal']:>8}  {label:>5}  {item['uri']}")


@datasets.command("delete")
@click.argument("dataset_id", type=int)
@click.pass_context
def datasets_delete(ctx, dataset_id) -> None:
    """Delete a dataset and its items; refused while a job or manifest uses it."""
    with _client(ctx) as client:
        client.delete_dataset(dataset_id)


# --- teachers -------------------------------------------------------------------------------


@cli.group()
def teachers() -> None:
    """Register, convert and inspect teacher checkpoints."""


@teachers.command("register")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--metadata", "metadata_file", type=click.File(), help="Metadata JSON; default: what the file embeds."
)
@click.option(
    "--upload/--by-path",
    default=True,
    show_default=True,
    help="Upload the bytes, or pass a path under a data root.",
)
@click.option("--wait/--no-wait", default=True, help="Wait for a worker to validate it.")
@click.pass_context
def teachers_register(ctx, path, metadata_file, upload, wait) -> None:
    """Register a safetensors checkpoint as a teacher; its ID is the sha256 of the file."""
    try:
        metadata = json.load(metadata_file) if metadata_file else None
    except json.JSONDecodeError as exc:
        message = f"{metadata_file.name} is not JSON: {exc}"
        raise click.BadParameter(message, param_hint="--metadata") from None
    with _client(ctx) as client:
        register = client.upload_teacher if upload else client.register_teacher
        teacher = register(path.resolve(), metadata)
        if wait:
            teacher = client.wait_for_teacher(teacher["id"])
        _print(teacher)


@teachers.command("convert")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--arch", required=True, help="timm architecture, e.g. efficientnet_lite0")
@click.option("--classes", help="Comma-separated class names, in output order.")
@click.option("--classes-file", type=click.File(), help="One class name per line.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True)
@click.option("--image-size", type=int, help="Default: the architecture's timm config.")
@click.option(
    "--reset-classifier", is_flag=True, help="Keep the backbone, start a fresh classifier for these classes."
)
@click.option(
    "--dedupe-classes", is_flag=True, help="Suffix each repeated class name with its index: 'crane (517)'."
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def teachers_convert(
    source, arch, classes, classes_file, channels, image_size, reset_classifier, dedupe_classes, out
) -> None:
    """Convert a PyTorch state dict (.pt/.pth) into a registrable safetensors teacher."""
    from nst.checkpoint import ConversionError, convert, default_metadata, save_teacher

    names = classes.split(",") if classes else [line.strip() for line in (classes_file or []) if line.strip()]
    if len(names) < 2:
        raise click.BadParameter("give at least two class names", param_hint="--classes")
    names = _unique_class_names(names, dedupe=dedupe_classes)
    try:
        state = convert(
            source,
            architecture=arch,
            num_classes=len(names),
            channels=int(channels),
            reset_classifier=reset_classifier,
        )
    except ConversionError as exc:
        raise click.ClickException(str(exc)) from None
    metadata = default_metadata(arch, names, int(channels), image_size=image_size)
    save_teacher(state, out, metadata)
    click.echo(f"wrote {out} ({arch}, {len(names)} classes); register it with `nst teachers register {out}`")


def _unique_class_names(names: list[str], *, dedupe: bool) -> list[str]:
    # A registered teacher's class names must be unique, and ImageNet's own descriptions are not
    # ("crane" the bird and the machine): refuse before anything is written, or rename on request.
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        positions.setdefault(name, []).append(index)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if not repeated:
        return names
    if dedupe:
        return [f"{name} ({index})" if name in repeated else name for index, name in enumerate(names)]
    listed = "; ".join(f"{name!r} at {', '.join(map(str, where))}" for name, where in repeated.items())
    raise click.BadParameter(
        f"class names repeat ({listed}); class names must be unique: give unique names (for ImageNet, "
        "the WordNet synset IDs such as n02012849) or pass --dedupe-classes to suffix each repeat "
        "with its index",
        param_hint="--classes",
    )


@teachers.command("list")
@click.pass_context
def teachers_list(ctx) -> None:
    """Every teacher: ID prefix, status, generation, architecture and name."""
    with _client(ctx) as client:
        for t in client.teachers():
            click.echo(
                f"{t['id'][:12]}  {t['status']:<8} gen {t['generation']}  {t['architecture']:<20} {t['name']}"
            )


@teachers.command("show")
@click.argument("teacher_id")
@click.pass_context
def teachers_show(ctx, teacher_id) -> None:
    """A teacher as JSON, by its ID or a unique prefix of it."""
    with _client(ctx) as client:
        _print(client.teacher(_full_teacher_id(client, teacher_id)))


@teachers.command("delete")
@click.argument("teacher_id")
@click.pass_context
def teachers_delete(ctx, teacher_id) -> None:
    """Delete a teacher that no job uses (its uploaded file too)."""
    with _client(ctx) as client:
        teacher_id = _full_teacher_id(client, teacher_id)
        client.delete_teacher(teacher_id)
    click.echo(f"deleted teacher {teacher_id}")


# --- jobs -----------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Labeling jobs."""


def _number(option: str, value: str) -> float:
    try:
        return FINITE_FLOAT.convert(value, None, None)
    except click.BadParameter:
        message = f"{value!r} is neither a finite number nor 'calibrated'"
        raise click.BadParameter(message, param_hint=option) from None


def _waited(client: Client, job: dict, timeout: float | None) -> dict:
    """Wait for the job with a progress bar, print it, and fail (exit 1) unless it succeeded."""
    job = wait_with_progress(client, job, timeout=timeout)
    _print(job)
    if job["state"] != JobState.SUCCEEDED:
        raise click.ClickException(f"job {job['id']} ended {job['state']}")
    return job


_TIMEOUT = click.option(
    "--timeout", type=FINITE_FLOAT, help="Give up waiting after this many seconds (default: until it ends)."
)


@jobs.command("create")
@click.option("--teacher", "teacher_id", required=True)
@click.option("--dataset", "dataset_id", required=True, type=int)
@click.option("--batch-size", default=64, show_default=True)
@click.option(
    "--temperature",
    default="1.0",
    show_default=True,
    help="A number, or 'calibrated': the teacher's temperature fitted on a val split.",
)
@click.option("--top-k", default=10, show_default=True)
@click.option("--shard-size", default=1000, show_default=True)
@INFERENCE
@click.option(
    "--noised-teacher",
    is_flag=True,
    help="The paper's ablation only: label with the teacher's noise on (RandAugment, dropout, "
    "stochastic depth).",
)
@click.option(
    "--wait/--no-wait", default=True, help="Show progress until the job ends (exit 1 unless it succeeds)."
)
@_TIMEOUT
@click.pass_context
def jobs_create(
    ctx,
    teacher_id,
    dataset_id,
    batch_size,
    temperature,
    top_k,
    shard_size,
    inference,
    noised_teacher,
    wait,
    timeout,
):
    """Label a dataset with a teacher (an ID or a unique prefix), one Celery task per shard."""
    if temperature != "calibrated":
        temperature = _number("--temperature", temperature)
    with _client(ctx) as client:
        job = client.create_job(
            teacher_id=_full_teacher_id(client, teacher_id),
            dataset_id=dataset_id,
            batch_size=batch_size,
            temperature=temperature,
            top_k=top_k,
            shard_size=shard_size,
            inference=inference,
            noised_teacher=noised_teacher,
        )
        if wait:
            _waited(client, job, timeout)
        else:
            _print(job)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_show(ctx, job_id) -> None:
    """A job as JSON: state, progress, ETA, errors and the inference modes that labeled it."""
    with _client(ctx) as client:
        _print(client.job(job_id))


@jobs.command("wait")
@click.argument("job_id", type=int)
@_TIMEOUT
@click.pass_context
def jobs_wait(ctx, job_id, timeout) -> None:
    """Show progress until the job ends; exit 1 unless it succeeded."""
    with _client(ctx) as client:
        _waited(client, client.job(job_id), timeout)


@jobs.command("cancel")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_cancel(ctx, job_id) -> None:
    """Cancel a job: its queued shards are settled, labels already written stay."""
    with _client(ctx) as client:
        _print(client.cancel_job(job_id))


@jobs.command("delete")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_delete(ctx, job_id) -> None:
    """Delete a job and every label it wrote; refused while a shard of it is queued or running
    (cancel it first) or while a manifest was built from it."""
    with _client(ctx) as client:
        client.delete_job(job_id)
    click.echo(f"deleted job {job_id}")


@jobs.command("shards")
@click.argument("job_id", type=int)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in ShardState]),
    help="Only shards in this state (repeat for several).",
)
@click.pass_context
def jobs_shards(ctx, job_id, states) -> None:
    """A job's shards in order: index, items, state, labeled and failed, attempts, the modes and
    workers that labeled it, and a failed shard's error (`--state failed` for those alone)."""
    with _client(ctx) as client:
        for s in client.shards(job_id, states):
            click.echo(
                f"{s['index']:>6}  {s['start_ordinal']:>9}-{s['end_ordinal'] - 1:<9} {s['state']:<9} "
                f"{s['items_done']:>6} done {s['items_failed']:>5} failed  attempts {s['attempts']:<3} "
                f"{','.join(s['inference']) or '-'}  {','.join(s['workers']) or '-'}"
                + (f"  error: {s['error']}" if s["error"] else "")
            )


@jobs.command("errors")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_errors(ctx, job_id) -> None:
    """The images a job could not label (unreadable or missing files): item ID, file and why."""
    with _client(ctx) as client:
        for e in client.item_errors(job_id):
            click.echo(f"{e['item_id']:>10}  {e['uri']}  {e['message']}")


@jobs.command("resume")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_resume(ctx, job_id) -> None:
    """Re-enqueue unfinished shards (safe: labels are written once)."""
    with _client(ctx) as client:
        _print(client.resume_job(job_id))


@jobs.command("export")
@click.argument("job_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet")
@EXPORT_OUT
@click.pass_context
def jobs_export(ctx, job_id, fmt, out) -> None:
    """Every label of a job, as Parquet or JSON lines."""
    with _client(ctx) as client:
        client.export_labels(job_id, _export_target(out), fmt)
    _wrote(out)


@jobs.command("list")
@click.pass_context
def jobs_list(ctx) -> None:
    """Every job: ID, state, items done and failed, time left, dataset, teacher, how the teacher
    runs (the modes its shards ran in, or the mode asked for before any has), and how long it has
    waited for a worker, when no worker has touched it for a minute (10 s while none is online)."""
    with _client(ctx) as client:
        jobs = client.jobs()
        online = workers_online(client) if any(j.get("waiting_for_worker") for j in jobs) else ""
        for j in jobs:
            waiting = j.get("waiting_for_worker")  # absent from older APIs
            click.echo(
                f"{j['id']:>5}  {j['state']:<9} {j['items_done']:>8}/{j['items_total']:<8} "
                f"failed {j['items_failed']:<6} eta {_duration(j['eta_s']):<7} dataset "
                f"{j['dataset_id']:<4} teacher {j['teacher_id'][:12]}  "
                f"{','.join(j['inference_used']) or j['inference']}"
                + (f"  waiting for a worker {_duration(j['worker_idle_s'])} ({online})" if waiting else "")
            )


@cli.command("workers")
@click.pass_context
def workers_list(ctx) -> None:
    """The worker processes heard from in the last day, online ones first: name, process,
    state (online, stopped, or lost: silent for three heartbeats), device, concurrency, how
    long since each last reported and what it runs; and where the online ones and the API differ
    in that."""
    with _client(ctx) as client:
        found = client.workers()
    for w in found["data"]:
        click.echo(
            f"{w['name']:<32} pid {w['pid']:<7} {w['state']:<8} {w['device']:<8} "
            f"x{w['concurrency']:<3} last seen {_duration(w['silent_s'])} ago"
        )
        if w["software"]:
            click.echo("    " + ", ".join(f"{name} {installed}" for name, installed in w["software"].items()))
    click.echo(f"{found['online']} of {found['count']} online")
    for package, versions in found["software_differs"].items():
        each = "; ".join(f"{installed} on {', '.join(names)}" for installed, names in versions.items())
        click.echo(f"different {package} online: {each}")
    if not found["online"]:
        click.echo("start one with `nst worker`, against this service's database and broker")


def _duration(seconds: float | None) -> str:
    """3h05m, 4m10s, 42s; '-' for none."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@jobs.command("stats")
@click.argument("job_id", type=int)
@click.option(
    "--threshold", type=FINITE_FLOAT, default=0.3, show_default=True, help="Confidence filter to count above."
)
@click.option("--labeled-dataset", "labeled_dataset_id", type=int, help="Compare with this labeled set.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="Save the chart (.png/.svg).")
@click.pass_context
def jobs_stats(ctx, job_id, threshold, labeled_dataset_id, chart) -> None:
    """Per-class counts, before and after the threshold, as a table."""
    params = {"labeled_dataset_id": labeled_dataset_id} if labeled_dataset_id is not None else {}
    with _client(ctx) as client:
        stats = client.job_stats(job_id, threshold=threshold, **params)
        click.echo(format_stats(stats))
        if chart is not None:
            fmt = "svg" if chart.suffix.lower() == ".svg" else "png"
            client.job_stats_chart(job_id, chart, threshold=threshold, fmt=fmt, **params)
            _wrote(chart)


def format_stats(stats: dict) -> str:
    def ratio(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    width = max(len("class"), *(len(name) for name in stats["classes"]))
    lines = [
        f"job {stats['job_id']} ({stats['state']}), threshold {stats['threshold']}",
        f"{'class':<{width}}  {'pseudo':>8}  {'>= thr':>8}  {'mean conf':>9}  {'labeled':>8}",
    ]

    def row(name: str, counts: dict, mean: str) -> str:
        labeled = "-" if counts["labeled"] is None else counts["labeled"]
        pseudo, above = counts["pseudo_labeled"], counts["above_threshold"]
        return f"{name:<{width}}  {pseudo:>8}  {above:>8}  {mean:>9}  {labeled:>8}"

    for name, counts in stats["classes"].items():
        mean = counts["mean_confidence"]
        lines.append(row(name, counts, "-" if mean is None else f"{mean:.3f}"))
    lines.append(row("total", stats["totals"], ""))
    lines.append(
        f"imbalance (largest/smallest class): {ratio(stats['imbalance_ratio'])} pseudo-labeled, "
        f"{ratio(stats['imbalance_ratio_above_threshold'])} above the threshold, "
        f"{ratio(stats['labeled_imbalance_ratio'])} labeled"
    )
    return "\n".join(lines)


# --- manifests ------------------------------------------------------------------------------


@cli.group()
def manifests() -> None:
    """Filtered and balanced training manifests."""


@manifests.command("create")
@click.option("--job", "job_ids", type=int, multiple=True, help="A succeeded labeling job (repeatable).")
@click.option(
    "--labeled", "labeled_dataset_ids", type=int, multiple=True, help="A labeled train split (repeatable)."
)
@click.option(
    "--threshold", type=FINITE_FLOAT, default=0.3, show_default=True, help="Keep pseudo labels at or above."
)
@click.option("--target-per-class", type=int, help="Pseudo-labeled images per class (with copies).")
@click.option(
    "--target-mode", type=click.Choice(["even", "labeled_distribution"]), default="even", show_default=True
)
@click.option("--balance/--no-balance", default=True, show_default=True)
@click.option("--soft/--hard", default=True, show_default=True, help="Soft (distribution) or hard targets.")
@click.option("--temperature", type=FINITE_FLOAT, default=1.0, show_default=True)
@click.option("--per-class-thresholds", is_flag=True, help="The authors' per-class thresholds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only the manifest ID.")
@click.pass_context
def manifests_create(ctx, job_ids, labeled_dataset_ids, quiet, **options) -> None:
    """Build (or find) the manifest for these inputs; its ID is what `nst train --manifest` takes."""
    body = {"job_ids": list(job_ids), "labeled_dataset_ids": list(labeled_dataset_ids), **options}
    with _client(ctx) as client:
        manifest = client.create_manifest(**body)
    click.echo(manifest["id"] if quiet else json.dumps(manifest, indent=2))


@manifests.command("show")
@click.argument("manifest_id")
@click.pass_context
def manifests_show(ctx, manifest_id) -> None:
    """A manifest by its ID or a unique prefix of it (as `nst manifests list` prints them)."""
    with _client(ctx) as client:
        _print(client.manifest(client.full_id("manifest", manifest_id)))


@manifests.command("delete")
@click.argument("manifest_id")
@click.pass_context
def manifests_delete(ctx, manifest_id) -> None:
    """Delete a manifest and its entries; refused while a teacher trained on it is registered."""
    with _client(ctx) as client:
        manifest_id = client.full_id("manifest", manifest_id)
        client.delete_manifest(manifest_id)
    click.echo(f"deleted manifest {manifest_id}")


@manifests.command("list")
@click.pass_context
def manifests_list(ctx) -> None:
    """Every manifest: ID prefix, entries, samples, the jobs it was built from and when."""
    with _client(ctx) as client:
        for m in client.manifests():
            totals = m["totals"]
            click.echo(
                f"{m['id'][:16]}  {totals['entries']:>9} entries  {totals['samples']:>9} samples  "
                f"jobs {','.join(map(str, m['provenance']['job_ids'])) or '-'}  {m['created_at']}"
            )


@manifests.command("export")
@click.argument("manifest_id")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet")
@EXPORT_OUT
@click.pass_context
def manifests_export(ctx, manifest_id, fmt, out) -> None:
    """Every entry of a manifest; a file is kept only if its rows match the count and, for
    Parquet, the digest the service published."""
    with _client(ctx) as client:
        client.export_manifest(client.full_id("manifest", manifest_id), _export_target(out), fmt)
    _wrote(out)


def _add_trainer_commands() -> None:
    # The trainer's options come from its own config.
    from cli.demo import demo
    from trainer.cli import evaluate_command, iterate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")
    cli.add_command(iterate_command, "iterate")
    cli.add_command(demo, "demo")


_add_trainer_commands()


def main() -> None:
    cli(standalone_mode=True)


if __name__ == "__main__":
    main()
