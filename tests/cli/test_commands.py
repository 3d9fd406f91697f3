"""The CLI's registry, job and manifest commands, against the API in-process."""

from __future__ import annotations

import json
import socket

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cli.main import cli
from nst import software
from service.crud import workers
from tests.utils import synthetic
from tests.utils.transport import in_process_client

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)


@pytest.fixture
def run(client, monkeypatch):
    """Invoke ``nst ...`` with its client talking to the in-process app."""
    monkeypatch.setattr("cli.main.Client", lambda *_args, **_kwargs: in_process_client(client))

    def invoke(*args: str):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    return invoke


@pytest.fixture
def fails(client, monkeypatch):
    """Invoke ``nst ...`` against the in-process app, expecting it to fail: its result."""
    monkeypatch.setattr("cli.main.Client", lambda *_args, **_kwargs: in_process_client(client))

    def invoke(*args: str, code: int = 1):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, result.output + repr(result.exception)
        assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def job():
    teacher = synthetic.teacher(CLASSES)
    labels = [(CAT, 0.9), (CAT, 0.8), (CAT, 0.4), (DOG, 0.95), (DOG, 0.2), (EEL, 0.6)]
    return synthetic.finished_job(teacher, labels)


def test_manifests_create_prints_the_id_that_show_list_and_export_take(run, client, job, tmp_path):
    labeled = synthetic.labeled_dataset(CLASSES, [CAT, DOG, EEL])
    manifest_id = run(
        "manifests", "create", "--job", str(job.id), "--labeled", str(labeled), "--threshold", "0.5", "-q"
    ).strip()
    shown = json.loads(run("manifests", "show", manifest_id))
    assert shown == client.get(f"/manifests/{manifest_id}").json()
    assert shown["params"]["threshold"] == 0.5 and shown["provenance"]["job_ids"] == [job.id]
    listed = run("manifests", "list").split()[0]
    assert listed == manifest_id[:16] and json.loads(run("manifests", "show", listed.upper())) == shown
    out = tmp_path / "m.parquet"
    run("manifests", "export", listed, "--out", str(out))
    assert pq.read_table(out).num_rows == shown["totals"]["entries"]
    again = json.loads(
        run("manifests", "create", "--job", str(job.id), "--labeled", str(labeled), "--threshold", "0.5")
    )
    assert again["id"] == manifest_id  # the same inputs find the same manifest


def test_jobs_list_and_stats_show_what_the_api_returns(run, client, job, tmp_path):
    listed = run("jobs", "list").splitlines()
    assert len(listed) == 1 and listed[0].split()[:2] == [str(job.id), "succeeded"]
    chart = tmp_path / "stats.svg"
    table = run("jobs", "stats", str(job.id), "--threshold", "0.5", "--chart", str(chart))
    stats = client.get(f"/jobs/{job.id}/stats", params={"threshold": 0.5}).json()
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines()[2 : 2 + len(CLASSES) + 1]}
    assert rows == {
        name: [str(c["pseudo_labeled"]), str(c["above_threshold"])] for name, c in stats["classes"].items()
    } | {"total": [str(stats["totals"]["pseudo_labeled"]), str(stats["totals"]["above_threshold"])]}
    assert rows["cat"] == ["3", "2"]
    assert chart.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_jobs_errors_lists_the_images_a_job_could_not_label(run, job):
    from service.core.db import session_scope
    from service.models import ItemError

    with session_scope() as session:
        session.add(ItemError(job_id=job.id, item_id=job.item_ids[4], message="cannot identify image file"))
        session.add(ItemError(job_id=job.id, item_id=job.item_ids[1], message="No such file"))
    lines = run("jobs", "errors", str(job.id)).splitlines()
    assert [line.split()[0] for line in lines] == [str(job.item_ids[1]), str(job.item_ids[4])]
    assert lines[0].endswith("  No such file") and lines[1].endswith("  cannot identify image file")
    assert "/" in lines[0].split()[1]  # the file's URI


def test_datasets_items_lists_every_item(run, job):
    lines = run("datasets", "items", str(job.dataset_id)).splitlines()
    assert [int(line.split()[0]) for line in lines] == job.item_ids
    assert len(run("datasets", "items", str(job.dataset_id), "--limit", "2").splitlines()) == 2


def test_teachers_delete_removes_an_unused_teacher(run, client):
    teacher = synthetic.teacher(CLASSES, name="unused")
    run("teachers", "delete", teacher)
    assert client.get(f"/teachers/{teacher}").status_code == 404


def test_list_calls_follow_every_page(client):
    for n in range(5):
        synthetic.teacher(CLASSES, name=f"t{n}")
    api = in_process_client(client)
    assert len(api._listing("/teachers", {}, page_size=2)) == 5
    assert len(api.teachers()) == client.get("/teachers").json()["count"] == 5


def test_teacher_commands_take_a_unique_id_prefix(run, client):
    teacher = synthetic.teacher(CLASSES, name="prefixed")
    assert json.loads(run("teachers", "show", teacher[:12]))["id"] == teacher
    other = synthetic.teacher(CLASSES, name="other")
    common = next(n for n in range(64) if teacher[n] != other[n])
    refused = CliRunner().invoke(cli, ["teachers", "show", teacher[:common]])
    assert refused.exit_code != 0 and "2 teachers with an ID starting" in refused.output
    run("teachers", "delete", teacher[:12])
    assert client.get(f"/teachers/{teacher}").status_code == 404


def test_jobs_create_asks_for_the_inference_mode_named_and_refuses_another(run, client, teacher_file, fmnist):
    from tests.utils import factories

    teacher = factories.ready_teacher(client, teacher_file)
    pool = factories.unlabeled_dataset(client, fmnist / "unlabeled")
    args = ["jobs", "create", "--teacher", teacher["id"][:12], "--dataset", str(pool["id"]), "--no-wait"]
    assert json.loads(run(*args))["inference"] == "auto"
    assert json.loads(run(*args, "--inference", "eager"))["inference"] == "eager"
    listed = run("jobs", "list").splitlines()
    assert [line.split()[-1] for line in listed] == ["auto", "eager"]  # none labeled yet: as asked
    assert all(" eta - " in line for line in listed)
    refused = CliRunner().invoke(cli, [*args, "--inference", "fp8"])
    assert refused.exit_code == 2 and "'fp8' is not one of 'auto', 'eager'" in refused.output


@pytest.mark.parametrize(
    ("seconds", "shown"), [(None, "-"), (41.6, "42s"), (250, "4m10s"), (11_100, "3h05m")]
)
def test_durations_read_at_a_glance(seconds, shown):
    from cli.main import _duration

    assert _duration(seconds) == shown


def test_every_command_says_what_it_does():
    import click

    def commands(group: click.Group, prefix: str):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")

    assert [name for name, command in commands(cli, "") if not command.help] == []


def test_iterate_refuses_robustness_with_no_dataset_to_measure_it_on():
    args = ["iterate", "--labeled", "1", "--unlabeled", "2", "--robustness"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "--robustness: needs --eval or --robustness-on" in refused.output


def test_train_refuses_a_randaugment_magnitude_its_ops_cannot_run_at():
    refused = CliRunner().invoke(cli, ["train", "--manifest", "m", "--randaugment-magnitude", "2"])
    assert refused.exit_code == 2
    assert "--randaugment-magnitude: RandAugment 'rand-m2-n2-mmax10': Posterize cannot run" in refused.output
    args = ["iterate", "--labeled", "1", "--unlabeled", "2"]
    args += ["--randaugment-magnitude", "10", "--randaugment-increasing"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "PosterizeIncreasing cannot run at magnitude 10" in refused.output


def test_demo_refuses_a_randaugment_its_ops_cannot_run_before_writing_anything(tmp_path):
    args = ["demo", "--dir", str(tmp_path / "demo"), "--randaugment-authors", "--randaugment-magnitude", "2"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    assert "--randaugment-magnitude: RandAugment 'rand-m2-n2-mmax10'" in refused.output
    assert not (tmp_path / "demo").exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_service_is_one_line_for_every_command_and_the_group_s_api_is_theirs():
    api = f"http://127.0.0.1:{_closed_port()}"
    for args in (
        ["datasets", "list"],
        ["evaluate", "--teacher", "abc", "--dataset", "1"],  # its own --api would say :8000
        ["train", "--manifest", "abc"],
        ["iterate", "--labeled", "1", "--unlabeled", "2", "--teacher", "abc"],
    ):
        result = CliRunner().invoke(cli, ["--api", api, *args])
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
        assert f"Error: cannot reach the service at {api}/" in result.output, args


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "create", "--teacher", "t", "--dataset", "1", "--temperature", "nan"],
        ["manifests", "create", "--job", "1", "--threshold", "inf"],
        ["train", "--manifest", "m", "--lr", "nan"],
        ["evaluate", "--teacher", "t", "--dataset", "1", "--epsilons", "0,a"],
        ["evaluate", "--teacher", "t", "--dataset", "1", "--epsilons", "0,nan"],
    ],
)
def test_numbers_json_cannot_carry_are_usage_errors_before_any_request(args):
    result = CliRunner().invoke(cli, ["--api", f"http://127.0.0.1:{_closed_port()}", *args])
    assert result.exit_code == 2 and "Invalid value" in result.output and "cannot reach" not in result.output


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch):
    from tests.utils.env import clear_caches

    monkeypatch.setenv("NST_LEASE_S", "abc")
    clear_caches()
    try:
        result = CliRunner().invoke(cli, ["db", "upgrade"])
    finally:
        monkeypatch.delenv("NST_LEASE_S")
        clear_caches()
    assert result.exit_code == 1 and "NST_LEASE_S" in result.output and "Traceback" not in result.output


def test_a_422_names_the_field_in_words(fails, job):
    result = fails("manifests", "create", "--job", str(job.id), "--threshold", "2")
    assert "threshold: Input should be less than or equal to 1" in result.output
    assert "'loc'" not in result.output


def test_an_export_writes_only_the_file_to_stdout_and_refuses_a_missing_folder(run, fails, job, tmp_path):
    out = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(cli, ["jobs", "export", str(job.id), "--format", "jsonl", "--out", str(out)])
    # --out /dev/stdout | jq: the note goes to stderr, stdout carries only the file
    assert result.exit_code == 0 and result.stdout == "" and f"wrote {out}" in result.stderr
    assert len(out.read_text().splitlines()) == len(job.item_ids)
    missing = tmp_path / "nope" / "labels.parquet"
    result = fails("jobs", "export", str(job.id), "--out", str(missing))
    assert f"folder {str(missing.parent)!r} does not exist" in result.output
    assert not missing.parent.exists()


def test_an_export_to_a_dash_goes_to_stdout_with_nothing_else(run, job):
    labels = run("jobs", "export", str(job.id), "--format", "jsonl", "--out", "-")
    assert sorted(json.loads(line)["item_id"] for line in labels.splitlines()) == sorted(job.item_ids)
    manifest_id = run("manifests", "create", "--job", str(job.id), "--no-balance", "-q").strip()
    entries = run("manifests", "export", manifest_id, "--format", "jsonl", "--out", "-")
    assert len(entries.splitlines()) == json.loads(run("manifests", "show", manifest_id))["totals"]["entries"]


def test_waiting_for_a_job_that_failed_exits_1_after_printing_it(fails, client):
    failed = synthetic.finished_job(synthetic.teacher(CLASSES, name="failing"), [(CAT, 0.9)], state="failed")
    result = fails("jobs", "wait", str(failed.id))
    assert f"Error: job {failed.id} ended failed" in result.output
    assert json.loads(result.stdout)["state"] == "failed"


def test_a_job_no_worker_has_touched_for_minutes_says_it_waits_for_one(run, fails, client):
    from datetime import timedelta

    from sqlalchemy import update

    from service.core.db import session_scope
    from service.models import Job, Shard, utcnow

    teacher = synthetic.teacher(CLASSES, name="unattended")
    waiting, fresh = (synthetic.finished_job(teacher, [(CAT, 0.9)], state="queued") for _ in range(2))
    long_ago = utcnow() - timedelta(minutes=10)
    with session_scope() as session:  # queued ten minutes ago, never claimed
        session.execute(
            update(Shard)
            .where(Shard.job_id == waiting.id)
            .values(started_at=None, finished_at=None, attempts=0, items_done=0, enqueued_at=long_ago)
        )
        session.execute(update(Job).where(Job.id == waiting.id).values(created_at=long_ago))
    lines = {int(line.split()[0]): line for line in run("jobs", "list").splitlines()}
    assert "  waiting for a worker 10m0" in lines[waiting.id]  # 10 minutes and the seconds since
    assert lines[waiting.id].endswith("s (no worker online)")
    assert "waiting for a worker" not in lines[fresh.id]
    result = fails("jobs", "wait", str(waiting.id), "--timeout", "0.1")
    assert "waiting for a worker=10:0" in result.output and "not finished after" in result.output
    assert "(no worker online)" in result.output
    with session_scope() as session:  # a worker is up, busy elsewhere or on another broker
        workers.report(session, name="w1@host", pid=10, device="cpu", concurrency=1, heartbeat_s=5)
    lines = {int(line.split()[0]): line for line in run("jobs", "list").splitlines()}
    assert lines[waiting.id].endswith("s (1 online)")


def test_workers_lists_each_with_its_state_and_counts_those_online(run, monkeypatch):
    from datetime import timedelta

    from service.core.db import session_scope
    from service.models import utcnow

    synthetic.migrate()
    assert run("workers").splitlines() == [
        "0 of 0 online",
        "start one with `nst worker`, against this service's database and broker",
    ]
    with session_scope() as session:
        workers.report(session, name="w1@host", pid=10, device="cpu", concurrency=2, heartbeat_s=5)
        workers.report(
            session,
            name="w2@host",
            pid=11,
            device="cuda",
            concurrency=1,
            heartbeat_s=5,
            now=utcnow() - timedelta(minutes=3),
        )
    first, second, total = run("workers").splitlines()
    assert first.split()[:6] == ["w1@host", "pid", "10", "online", "cpu", "x2"]
    assert second.split()[:4] == ["w2@host", "pid", "11", "lost"] and "last seen 3m0" in second
    assert total == "1 of 2 online"

    api = {"python": "3.11.2", "nst": "0.1.0", "torch": "2.14.1"}  # what the API runs, here
    monkeypatch.setattr(software, "installed", lambda: api)
    with session_scope() as session:  # two online on different torch, and what each runs
        for name, pid, torch in (("w1@host", 10, "2.14.1"), ("w3@host", 12, "2.13.0")):
            workers.report(
                session,
                name=name,
                pid=pid,
                device="cpu",
                concurrency=1,
                heartbeat_s=5,
                software=api | {"torch": torch},
            )
    lines = run("workers").splitlines()
    assert lines[1] == "    python 3.11.2, nst 0.1.0, torch 2.14.1"
    assert lines[-1] == "different torch online: 2.14.1 on API, w1@host; 2.13.0 on w3@host"
