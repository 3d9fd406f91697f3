"""Continuing `nst iterate` in an out_dir is refused when the recipe differs from the one its
generations were trained with, and allowed when only operational settings differ."""

import dataclasses
import json
from pathlib import Path

import pytest

from trainer.config import Recipe, Runtime, ServiceLink, TrainConfig
from trainer.iterate import (
    SET_PER_MODEL,
    IterateConfig,
    RecipeChanged,
    _config_dict,
    _load_rows,
    _train,
    iterate,
)

ROWS = [
    {"generation": 0, "student": "t0", "student_top1": 0.5},
    {"generation": 1, "student": "t1", "student_top1": 0.6},
]


def _config(tmp_path, **changes) -> IterateConfig:
    train = TrainConfig(ServiceLink(manifest_id=""), Recipe(steps=100), Runtime(workers=2))
    base = IterateConfig(labeled_dataset_id=1, unlabeled_dataset_id=2, out_dir=str(tmp_path), train=train)
    return dataclasses.replace(base, **changes)


def _write_state(cfg: IterateConfig, rows=ROWS, drop: tuple[str, ...] = ()) -> None:
    config = _config_dict(cfg)
    for name in drop:
        config.pop(name)
    state = {"config": config, "rows": rows}
    (Path(cfg.out_dir) / "iterate.json").write_text(json.dumps(state))


def test_same_recipe_with_other_operational_settings_continues(tmp_path):
    _write_state(_config(tmp_path))
    later = _config(
        tmp_path,
        generations=5,
        shard_size=500,
        students=["resnet18", "resnet34"],  # a new model for generation 2, not yet trained
        teacher_id="t0",  # the first teacher is recorded: how it was made no longer matters
        train=TrainConfig(
            ServiceLink(manifest_id="m"),
            Recipe(steps=100, seed=9),
            Runtime(workers=0, amp=False, checkpoint_every=7),
        ),
    )
    assert _load_rows(later) == ROWS


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"threshold": 0.5}, "threshold: 0.3 -> 0.5"),
        ({"soft": False}, "soft: True -> False"),
        ({"inference": "eager"}, "inference: 'auto' -> 'eager'"),
        ({"students": ["resnet34"]}, "students: ['resnet18'] -> ['resnet34']"),
        (
            {"train": TrainConfig(ServiceLink(manifest_id=""), Recipe(steps=200), Runtime(workers=2))},
            "train.steps: 100 -> 200",
        ),
    ],
)
def test_changed_recipe_is_refused_naming_the_setting(tmp_path, changes, named):
    _write_state(_config(tmp_path))
    with pytest.raises(RecipeChanged) as refused:
        _load_rows(_config(tmp_path, **changes))
    assert named in str(refused.value) and "iterate.json" in str(refused.value)


def test_a_first_teacher_in_training_is_protected_too(tmp_path):
    """No generation recorded yet: the teacher's checkpoints would be resumed under new settings."""
    _write_state(_config(tmp_path), rows=[])
    assert _load_rows(_config(tmp_path, generations=4)) == []
    with pytest.raises(RecipeChanged, match="teacher_steps: None -> 50"):
        _load_rows(_config(tmp_path, teacher_steps=50))


def test_setting_missing_from_an_older_file_is_not_compared(tmp_path):
    _write_state(_config(tmp_path), drop=("temperature",))
    assert _load_rows(_config(tmp_path, temperature=2.0)) == ROWS


def test_the_recipe_is_recorded_before_the_first_teacher_trains(tmp_path, monkeypatch):
    def stopped(cfg, client):
        raise KeyboardInterrupt  # the run stopped while the teacher trained

    monkeypatch.setattr("trainer.iterate._first_teacher", stopped)
    with pytest.raises(KeyboardInterrupt):
        iterate(_config(tmp_path), client=None)
    state = json.loads((tmp_path / "iterate.json").read_text())
    assert state["rows"] == [] and state["config"]["train"]["steps"] == 100
    assert not (tmp_path / "generations.md").exists()


def test_the_loop_sets_for_each_model_only_what_it_leaves_out_of_the_comparison(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr("trainer.train.train", lambda cfg, client: trained.append(cfg))
    cfg = _config(tmp_path)
    _train(cfg, None, manifest_id="m1", architecture="resnet34", generation=2, parent_id="t1", steps=None)

    def flat(train: TrainConfig) -> dict:
        return {name: getattr(getattr(train, part), name) for name, part in TrainConfig.field_names().items()}

    before, after = flat(cfg.train), flat(trained[0])
    changed = {name for name in before if before[name] != after[name]}
    assert changed and changed <= SET_PER_MODEL


class _Pool:
    """Just enough of the client for a generation's labeling: jobs that stop or finish."""

    def __init__(self, states: dict[int, str]):
        self.states, self.created, self.bodies = states, [], {}

    def create_job(self, **body) -> dict:
        job_id = len(self.created) + 1
        self.states[job_id] = "running"
        self.created.append(job_id)
        self.bodies[job_id] = body
        return self.job(job_id)

    def job(self, job_id: int) -> dict:
        if job_id not in self.states:
            from nst.client import NotFound

            raise NotFound(404, f"job {job_id} not found", "GET", f"/jobs/{job_id}")
        return {"id": job_id, "state": self.states[job_id], **self.bodies[job_id]}

    def jobs(self, *, teacher_id: str, dataset_id: int) -> list[dict]:
        jobs = [self.job(job_id) for job_id in self.states]
        return [job for job in jobs if (job["teacher_id"], job["dataset_id"]) == (teacher_id, dataset_id)]


def _labeling_job(cfg, pool, generation: int, teacher: str) -> dict:
    from trainer.iterate import _job

    return _job(cfg, pool, generation, teacher, kind="labeling", dataset_id=cfg.unlabeled_dataset_id)


def test_a_resumed_generation_waits_for_its_labeling_job_instead_of_labeling_again(tmp_path):
    cfg, pool = _config(tmp_path), _Pool({})
    _write_state(cfg)
    first = _labeling_job(cfg, pool, 2, "t1")  # then the run stops while the job labels
    assert _load_rows(cfg) == ROWS  # the recorded job does not count as a generation
    again = _labeling_job(cfg, pool, 2, "t1")
    assert again["id"] == first["id"] and pool.created == [first["id"]]


@pytest.mark.parametrize("ending", ["failed", "cancelled", "deleted"])
def test_a_job_that_cannot_finish_or_another_teacher_labels_anew(tmp_path, ending):
    cfg, pool = _config(tmp_path), _Pool({})
    _write_state(cfg)
    first = _labeling_job(cfg, pool, 2, "t1")
    if ending == "deleted":
        del pool.states[first["id"]]
    else:
        pool.states[first["id"]] = ending
    assert _labeling_job(cfg, pool, 2, "t1")["id"] != first["id"]
    other_teacher = _labeling_job(cfg, pool, 2, "t9")
    assert other_teacher["id"] not in (first["id"], pool.created[1]) and len(pool.created) == 3


class _SavedButUnsent(_Pool):
    """The service saved the job, then could not enqueue it (503), or the run died before the
    answer came: the job exists, and the run never learned its ID."""

    down = True

    def create_job(self, **body) -> dict:
        from nst.client import NstError

        job = super().create_job(**body)
        if self.down:
            raise NstError(
                503, f"job {job['id']} is saved but not all its shards were enqueued", "POST", "/jobs"
            )
        return job


def test_a_job_created_but_never_recorded_is_adopted_not_created_again(tmp_path):
    from nst.client import NstError

    cfg, pool = _config(tmp_path), _SavedButUnsent({})
    _write_state(cfg)
    with pytest.raises(NstError):
        _labeling_job(cfg, pool, 2, "t1")
    pool.down = False  # the service is back
    again = _labeling_job(cfg, pool, 2, "t1")
    assert again["id"] == 1 and pool.created == [1]
    assert _labeling_job(cfg, pool, 2, "t1")["id"] == 1  # recorded now


def test_a_job_from_before_the_request_is_not_adopted(tmp_path):
    """A person's earlier job of the same teacher on the pool was never this run's request."""
    from nst.client import NstError

    cfg, pool = _config(tmp_path), _Pool({})
    _write_state(cfg)
    earlier = pool.create_job(
        teacher_id="t1",
        dataset_id=cfg.unlabeled_dataset_id,
        batch_size=cfg.label_batch_size,
        shard_size=cfg.shard_size,
        noised_teacher=False,
    )

    def refused(**body):
        raise NstError(422, "teacher_id: not ready", "POST", "/jobs")  # saved nothing

    pool.create_job, create = refused, pool.create_job
    with pytest.raises(NstError):
        _labeling_job(cfg, pool, 2, "t1")
    pool.create_job = create
    assert _labeling_job(cfg, pool, 2, "t1")["id"] != earlier["id"]


def test_a_job_the_service_saved_in_another_inference_mode_is_not_adopted(tmp_path):
    """A stopped run's request is found by its options, the teacher's mode among them."""
    cfg, pool = _config(tmp_path, inference="eager"), _SavedButUnsent({})
    _write_state(cfg)
    other_mode = dataclasses.replace(cfg, inference="openvino")
    from nst.client import NstError

    with pytest.raises(NstError):
        _labeling_job(other_mode, pool, 2, "t1")  # saved, never heard back about
    pool.down = False
    job = _labeling_job(cfg, pool, 2, "t1")
    assert job["id"] == 2 and pool.bodies[2]["inference"] == "eager"


def test_a_probe_job_is_recorded_and_continued_like_the_pools(tmp_path):
    from trainer.iterate import _job, _load_state, _save

    cfg, pool = _config(tmp_path), _Pool({})
    _write_state(cfg)
    labeling = _labeling_job(cfg, pool, 2, "t1")
    probe = _job(cfg, pool, 2, "t1", kind="probe", dataset_id=9)
    _save(cfg, ROWS)  # the generation is not done: both jobs stay recorded
    assert {_load_state(cfg)[kind]["job"] for kind in ("labeling", "probe")} == {labeling["id"], probe["id"]}
    assert _job(cfg, pool, 2, "t1", kind="probe", dataset_id=9)["id"] == probe["id"]
    assert pool.created == [labeling["id"], probe["id"]]


def test_a_second_run_on_the_same_out_dir_is_refused(tmp_path):
    from trainer.iterate import OutDirBusy, _out_dir_lock

    cfg = _config(tmp_path)
    busy = pytest.raises(OutDirBusy, match="another nst iterate is running on")
    with _out_dir_lock(cfg), busy, _out_dir_lock(cfg):
        pass
    with _out_dir_lock(cfg):  # free again once the first ends
        pass


def test_a_failed_labeling_job_is_one_error_line(tmp_path, monkeypatch):
    import click

    from trainer.cli import _one_line_errors
    from trainer.iterate import _waited

    monkeypatch.setattr("trainer.iterate.wait_with_progress", lambda client, job: job)
    job = {"id": 4, "state": "failed", "errors": ["boom"]}
    expected = r"labeling job 4 ended failed: \['boom'\]; run the same"
    with pytest.raises(click.ClickException, match=expected), _one_line_errors():
        _waited(None, job, "labeling")


def test_a_file_from_before_the_increasing_ops_counts_as_the_authors_ops(tmp_path):
    cfg = _config(tmp_path)
    _write_state(cfg)
    state = json.loads((tmp_path / "iterate.json").read_text())
    del state["config"]["train"]["randaugment_increasing"]  # as files written before it hold
    (tmp_path / "iterate.json").write_text(json.dumps(state))
    assert _load_rows(cfg) == ROWS
    increasing = TrainConfig(ServiceLink(manifest_id=""), Recipe(steps=100, randaugment_increasing=True))
    with pytest.raises(RecipeChanged, match="train.randaugment_increasing: False -> True"):
        _load_rows(_config(tmp_path, train=increasing))


class _NoRequests:
    def __getattr__(self, name):
        raise AssertionError(f"the loop asked the service ({name}) before refusing")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"students": ["resnet18", "resnt34"]}, "students: 'resnt34': not a timm model name"),
        ({"teacher_architecture": "resnet_18"}, "teacher_architecture: 'resnet_18': not a timm model name"),
        ({"teacher_steps": 0}, "teacher_steps: must be 1 or more"),
    ],
)
def test_a_model_the_loop_cannot_build_is_refused_before_generation_0(tmp_path, changes, named):
    from trainer.config import RecipeError

    with pytest.raises(RecipeError, match=named):
        iterate(_config(tmp_path, **changes), _NoRequests())
    assert not (tmp_path / "iterate.json").exists()


def test_each_generation_trains_for_its_own_steps_the_last_repeating(tmp_path):
    cfg = _config(tmp_path, student_steps=[100, 300])
    assert [cfg.steps_for(g) for g in (1, 2, 3, 4)] == [100, 300, 300, 300]
    assert [_config(tmp_path).steps_for(g) for g in (1, 2)] == [100, 100]  # the template's


def test_student_steps_are_compared_only_as_far_as_recorded_generations_trained(tmp_path):
    _write_state(_config(tmp_path, student_steps=[100, 300]), rows=ROWS)  # generation 1 recorded
    # Generation 1 trained 100 steps (the template's too): later generations may change.
    assert _load_rows(_config(tmp_path, student_steps=[100, 500])) == ROWS
    assert _load_rows(_config(tmp_path)) == ROWS
    with pytest.raises(RecipeChanged, match=r"student_steps: \[100\] -> \[200\]"):
        _load_rows(_config(tmp_path, student_steps=[200, 300]))


def test_a_file_from_before_per_generation_steps_trained_every_student_for_the_template(tmp_path):
    _write_state(_config(tmp_path), drop=("student_steps",))
    assert _load_rows(_config(tmp_path, student_steps=[100, 400])) == ROWS
    with pytest.raises(RecipeChanged, match=r"student_steps: \[100\] -> \[50\]"):
        _load_rows(_config(tmp_path, student_steps=[50]))


def test_a_generation_trains_for_the_steps_it_is_given(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr("trainer.train.train", lambda cfg, client: trained.append(cfg))
    cfg = _config(tmp_path, student_steps=[100, 250])
    _train(
        cfg,
        None,
        manifest_id="m",
        architecture="resnet18",
        generation=2,
        parent_id="t",
        steps=cfg.steps_for(2),
    )
    assert trained[0].recipe.steps == 250


def test_student_steps_below_one_are_refused(tmp_path):
    from trainer.config import RecipeError

    with pytest.raises(RecipeError, match="student_steps"):
        _config(tmp_path, student_steps=[100, 0]).check()
