"""The trainer through the real service: a tiny timm student on real images, a few steps."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.fashion_mnist import CLASSES
from tests.utils.stack import Stack
from trainer import train as train_module
from trainer.config import TrainConfig
from trainer.state import load_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory, shared_root, fmnist, teacher_file):
    """API and worker processes, the Fashion-MNIST sets registered, a labeling job and a
    manifest built from it, shared by the module's tests."""
    base = tmp_path_factory.mktemp("trainer-service")
    stack = Stack(base / "logs", {"NST_DATA_DIR": str(base / "nst"), "NST_DATA_ROOTS": str(shared_root)})
    client = stack.start_api()
    stack.start_worker()
    try:
        labeled = client.register_dataset(
            name="labeled", kind="labeled", split="train", path=fmnist / "labeled", classes=CLASSES
        )
        pool = client.register_dataset(name="pool", kind="unlabeled", path=fmnist / "unlabeled")
        test = client.register_dataset(
            name="test", kind="labeled", split="test", path=fmnist / "test", classes=labeled["classes"]
        )
        teacher = client.wait_for_teacher(client.upload_teacher(teacher_file)["id"], timeout=120)
        job = client.wait_for_job(
            client.create_job(teacher_id=teacher["id"], dataset_id=pool["id"])["id"], timeout=300
        )
        assert job["state"] == "succeeded", stack.logs()
        manifest = client.create_manifest(
            labeled_dataset_ids=[labeled["id"]], job_ids=[job["id"]], threshold=0.0
        )
        yield SimpleNamespace(
            stack=stack,
            client=client,
            labeled=labeled,
            pool=pool,
            test=test,
            teacher=teacher,
            job=job,
            manifest=manifest,
        )
    finally:
        stack.stop()


def _cfg(service, tmp_path, **overrides) -> TrainConfig:
    values = dict(
        manifest_id=service.manifest["id"],
        api_url=service.stack.url,
        out_dir=str(tmp_path / "run"),
        architecture="resnet10t",
        steps=6,
        batch_size=8,
        pseudo_ratio=3,
        workers=0,
        warmup_steps=2,
        progress=False,
        checkpoint_every=3,
        register=False,
    )
    values.update(overrides)
    return TrainConfig.from_flat(values)


def test_a_student_trains_from_a_manifest_and_registers_with_lineage(service, tmp_path):
    cfg = _cfg(
        service,
        tmp_path,
        register=True,
        eval_dataset_id=service.test["id"],
        parent_id=service.teacher["id"],
        generation=1,
        workers=1,
        finetune_steps=2,  # the resolution fix: the registered student labels at 32 px
        finetune_image_size=32,
    )
    result = train_module.train(cfg)
    student = service.client.teacher(result["teacher_id"])
    assert student["status"] == "ready"
    assert student["parent_id"] == service.teacher["id"]
    assert (student["manifest_id"], student["generation"]) == (service.manifest["id"], 1)
    assert student["architecture"] == "resnet10t" and student["image_size"] == 32
    assert student["class_names"] == service.manifest["classes"]
    metrics = student["metrics"]
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["count"] == 100
    assert len(metrics["per_class"]) == 10
    state = load_state(tmp_path / "run" / "state.safetensors")
    assert state["step"] == 6 and state["config"]["service"]["manifest_id"] == service.manifest["id"]
    assert "api_token" not in state["config"]["service"]


def test_resume_continues_exactly_like_an_unbroken_run(service, tmp_path, monkeypatch):
    unbroken = train_module.train(_cfg(service, tmp_path / "a"))
    assert unbroken["steps"] == 6

    real_step, calls = train_module._step, []

    def crash_on_the_fifth_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("machine lost")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "_step", crash_on_the_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(_cfg(service, tmp_path / "b"))
    monkeypatch.setattr(train_module, "_step", real_step)
    assert load_state(tmp_path / "b" / "run" / "state.safetensors")["step"] == 3
    resumed = train_module.train(_cfg(service, tmp_path / "b", resume=True))
    assert resumed["steps"] == 6

    a = load_state(tmp_path / "a" / "run" / "state.safetensors")
    b = load_state(tmp_path / "b" / "run" / "state.safetensors")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for index, values in a["optimizer"]["state"].items():
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][index][name]))
    assert a["scheduler"] == b["scheduler"]


def test_a_training_state_is_never_resumed_onto_another_manifest(service, tmp_path):
    train_module.train(_cfg(service, tmp_path, steps=3))
    other = service.client.create_manifest(
        labeled_dataset_ids=[service.labeled["id"]], job_ids=[service.job["id"]], threshold=0.5
    )
    assert other["id"] != service.manifest["id"]
    with pytest.raises(train_module.ResumeMismatch, match=other["id"]):
        train_module.train(_cfg(service, tmp_path, manifest_id=other["id"], resume=True))
    assert load_state(tmp_path / "run" / "state.safetensors")["step"] == 3  # left as it was


def test_ddp_with_two_cpu_processes(service, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "trainer",
        "--manifest",
        service.manifest["id"],
        "--api",
        service.stack.url,
        "--out-dir",
        str(out),
        "--architecture",
        "resnet10t",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
        "--checkpoint-every",
        "0",
        "--register",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(chunk) for chunk in _json_objects(done.stdout)]
    assert len(results) == 2 and all(r["steps"] == 4 for r in results)
    registered = [r["teacher_id"] for r in results if "teacher_id" in r]
    assert len(registered) == 1  # only rank 0 writes and registers the student
    weights = load_file(str(out / "student.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    rng = load_state(out / "state.safetensors")["rng"]  # each rank's own, and its own noise
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])


def _json_objects(text: str) -> list[str]:
    objects, depth, start = [], 0, None
    for i, char in enumerate(text):
        if char == "{":
            depth, start = depth + 1, i if depth == 0 else start
        elif char == "}":
            depth -= 1
            if depth == 0:
                objects.append(text[start : i + 1])
    return objects


def test_two_generations_of_nst_iterate_complete_and_record_lineage(service, tmp_path, fmnist):
    from cli.main import cli

    # Robustness runs dozens of corrupted passes over its dataset for every generation: measured
    # here on a dataset of its own, one test image per class, rather than on --eval (inside the
    # stack's data roots, beside the Fashion-MNIST folders).
    probe_dir = fmnist / "robustness-probe"
    for name in CLASSES:
        (probe_dir / name).mkdir(parents=True, exist_ok=True)
        first = sorted((fmnist / "test" / name).iterdir())[0]
        (probe_dir / name / first.name).write_bytes(first.read_bytes())
    probe = service.client.register_dataset(
        name="robustness-probe", kind="labeled", split="test", path=probe_dir, classes=CLASSES
    )
    out = tmp_path / "loop"
    args = [
        "iterate",
        "--api",
        service.stack.url,
        "--labeled",
        str(service.labeled["id"]),
        "--unlabeled",
        str(service.pool["id"]),
        "--eval",
        str(service.test["id"]),
        "--generations",
        "2",
        "--teacher-arch",
        "resnet10t",
        "--students",
        "resnet10t,resnet14t",
        "--student-steps",
        "4,6",
        "--teacher-steps",
        "4",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out),
        "--truth",
        str(fmnist / "unlabeled-truth.csv"),
        "--threshold",
        "0.0",
        "--robustness",
        "--robustness-on",
        str(probe["id"]),
        "--inference",
        "eager",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = json.loads((out / "iterate.json").read_text())["rows"]
    assert [r["generation"] for r in rows] == [0, 1, 2]
    # Robustness on its own dataset for every generation, mCE against generation 0's.
    assert {r["robustness"]["count"] for r in rows} == {probe["item_count"]} == {len(CLASSES)}
    assert rows[0]["mce"] == 100.0 and all(r["mce"] > 0 for r in rows[1:])
    assert all(len(r["robustness"]["fgsm"]) == 5 and r["robustness"]["corruptions"] for r in rows)
    assert [r["student_arch"] for r in rows] == ["resnet10t", "resnet10t", "resnet14t"]
    assert [r["student_steps"] for r in rows[1:]] == [4, 6]  # each generation its own steps
    client = service.client
    for previous, row in zip(rows, rows[1:], strict=False):
        student = client.teacher(row["student"])
        assert student["parent_id"] == previous["student"] == row["teacher"]
        assert student["generation"] == row["generation"]
        assert student["manifest_id"] == row["manifest"]
        assert 0.0 <= row["pseudo_acc_all"] <= 1.0 and row["pseudo_unique"] > 0
        (job,) = client.jobs(teacher_id=row["teacher"], dataset_id=service.pool["id"])
        assert (job["inference"], job["inference_used"]) == ("eager", ["eager"])  # not the CPU's openvino
        assert row["labeled_in"] == ["eager"]
    table = (out / "generations.md").read_text()
    assert table.count("\n") == 2 + 3 and "| pseudo labels made in |" in table and "| eager |" in table
    assert (out / "generations.png").stat().st_size > 0
    again = CliRunner().invoke(cli, args)  # finished: continues from the last generation
    assert again.exit_code == 0 and "continuing after generation 2" in again.output
    assert len(json.loads((out / "iterate.json").read_text())["rows"]) == 3
    changed = [*args[: args.index("--steps") + 1], "5", *args[args.index("--steps") + 2 :]]
    refused = CliRunner().invoke(cli, changed)  # other settings: refused, nothing trained
    assert refused.exit_code == 1 and "train.steps: 4 -> 5" in refused.output
    assert len(json.loads((out / "iterate.json").read_text())["rows"]) == 3


def test_nst_evaluate_scores_any_registered_teacher_with_its_confusion_matrix(service, tmp_path):
    from cli.main import cli

    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--api",
        service.stack.url,
        "--teacher",
        service.teacher["id"],
        "--dataset",
        str(service.test["id"]),
        "--workers",
        "0",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    scores = json.loads(out.read_text())
    confusion = torch.tensor(scores["confusion"])
    assert scores["count"] == confusion.sum() == service.test["item_count"]
    assert scores["top1"] == pytest.approx(float(confusion.trace()) / scores["count"])
    assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
    for index, name in enumerate(scores["classes"]):
        row = confusion[index]
        if row.sum():
            assert scores["per_class"][name] == pytest.approx(float(row[index] / row.sum()))
    assert f"top-1 {scores['top1']:.4f}" in result.output


def test_a_teacher_checkpoint_downloads_as_the_file_its_id_names(service, tmp_path):
    path = service.client.download_teacher(service.teacher["id"], tmp_path / "t.safetensors")
    assert path.stat().st_size == service.teacher["size_bytes"]
