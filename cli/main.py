"""The ``nst`` command: run the service's processes and drive it over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from nst.client import Client, NstError
from nst.progress import wait_with_progress


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["api"], token=ctx.obj["token"])


def _print(value) -> None:
    click.echo(json.dumps(value, indent=2))


@click.group()
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
    from service.core.migrate import upgrade_head

    upgrade_head()
    click.echo("database is at the newest revision")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def api(host: str, port: int) -> None:
    """Serve the REST API (applies migrations first)."""
    import uvicorn

    uvicorn.run("service.main:app", host=host, port=port, log_level="info")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--concurrency", "-c", default=1, show_default=True, help="Pool processes; one per GPU on a GPU machine."
)
@click.pass_context
def worker(ctx: click.Context, concurrency: int) -> None:
    """Run a Celery labeling worker (extra arguments go to `celery worker`)."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.tasks",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        *ctx.args,
    ]
    os.execv(sys.executable, args)


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
    with _client(ctx) as client:
        _print(
            client.register_dataset(
                name=name, kind=kind, path=path, split=split, classes=classes.split(",") if classes else None
            )
        )


@datasets.command("list")
@click.pass_context
def datasets_list(ctx) -> None:
    with _client(ctx) as client:
        for d in client.datasets():
            click.echo(
                f"{d['id']:>5}  {d['kind']:<9} {d['split'] or '-':<5} {d['item_count']:>8}  {d['name']}"
            )


@datasets.command("show")
@click.argument("dataset_id", type=int)
@click.pass_context
def datasets_show(ctx, dataset_id) -> None:
    with _client(ctx) as client:
        _print(client.dataset(dataset_id))


@datasets.command("delete")
@click.argument("dataset_id", type=int)
@click.pass_context
def datasets_delete(ctx, dataset_id) -> None:
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
    metadata = json.load(metadata_file) if metadata_file else None
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
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def teachers_convert(
    source, arch, classes, classes_file, channels, image_size, reset_classifier, out
) -> None:
    """Convert a PyTorch state dict (.pt/.pth) into a registrable safetensors teacher."""
    from nst.checkpoint import ConversionError, convert, default_metadata, save_teacher

    names = classes.split(",") if classes else [line.strip() for line in (classes_file or []) if line.strip()]
    if len(names) < 2:
        raise click.BadParameter("give at least two class names", param_hint="--classes")
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


@teachers.command("list")
@click.pass_context
def teachers_list(ctx) -> None:
    with _client(ctx) as client:
        for t in client.teachers():
            click.echo(
                f"{t['id'][:12]}  {t['status']:<8} gen {t['generation']}  {t['architecture']:<20} {t['name']}"
            )


@teachers.command("show")
@click.argument("teacher_id")
@click.pass_context
def teachers_show(ctx, teacher_id) -> None:
    with _client(ctx) as client:
        _print(client.teacher(teacher_id))


# --- jobs -----------------------------------------------------------------------------------


@cli.group()
def jobs() -> None:
    """Labeling jobs."""


@jobs.command("create")
@click.option("--teacher", "teacher_id", required=True)
@click.option("--dataset", "dataset_id", required=True, type=int)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--top-k", default=10, show_default=True)
@click.option("--shard-size", default=1000, show_default=True)
@click.option("--wait/--no-wait", default=True, help="Show progress until the job ends.")
@click.pass_context
def jobs_create(ctx, teacher_id, dataset_id, batch_size, temperature, top_k, shard_size, wait):
    with _client(ctx) as client:
        job = client.create_job(
            teacher_id=teacher_id,
            dataset_id=dataset_id,
            batch_size=batch_size,
            temperature=temperature,
            top_k=top_k,
            shard_size=shard_size,
        )
        if wait:
            job = wait_with_progress(client, job)
        _print(job)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_show(ctx, job_id) -> None:
    with _client(ctx) as client:
        _print(client.job(job_id))


@jobs.command("wait")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_wait(ctx, job_id) -> None:
    with _client(ctx) as client:
        _print(wait_with_progress(client, client.job(job_id)))


@jobs.command("cancel")
@click.argument("job_id", type=int)
@click.pass_context
def jobs_cancel(ctx, job_id) -> None:
    with _client(ctx) as client:
        _print(client.cancel_job(job_id))


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
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def jobs_export(ctx, job_id, fmt, out) -> None:
    with _client(ctx) as client:
        client.export_labels(job_id, out, fmt)
    click.echo(f"wrote {out}")


def _add_trainer_commands() -> None:
    # The trainer's options come from its own config; it is imported only when asked for.
    from cli.demo import demo
    from trainer.cli import iterate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(iterate_command, "iterate")
    cli.add_command(demo, "demo")


_add_trainer_commands()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except NstError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
