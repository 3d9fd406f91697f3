import pytest

from nst.config import SettingsError, get_settings
from tests.utils.env import clear_caches


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("NST_DATA_ROOTS", "/no/such/folder", "NST_DATA_ROOTS"),
        ("NST_DATABASE_URL", "not a url", "NST_DATABASE_URL"),
        ("NST_WORKER_DEVICE", "tpu", "NST_WORKER_DEVICE"),
        ("NST_VISIBILITY_TIMEOUT_S", "0", "NST_VISIBILITY_TIMEOUT_S"),
        ("NST_WORKER_PREFETCH", "0", "NST_WORKER_PREFETCH"),
        ("NST_WORKER_CACHE_GB", "-1", "NST_WORKER_CACHE_GB"),
        (
            "NST_ALLOWED_HOSTS",
            "http://nst.example.org",
            "NST_ALLOWED_HOSTS: .*'http://nst.example.org' is not a host",
        ),
        ("NST_ALLOWED_HOSTS", "localhost,*.", "NST_ALLOWED_HOSTS: .*'\\*\\.' is not a host"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(monkeypatch, key, value, message):
    monkeypatch.setenv(key, value)
    clear_caches()
    with pytest.raises(SettingsError, match=message):
        get_settings()


def test_defaults_are_embedded(monkeypatch, tmp_path):
    monkeypatch.delenv("NST_DATA_ROOTS")
    monkeypatch.setenv("NST_DATA_DIR", str(tmp_path))
    clear_caches()
    settings = get_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'nst.db'}"
    assert settings.broker_url.startswith("sqla+sqlite:///")
    assert settings.data_roots == [tmp_path / "datasets"]
    assert settings.api_token is None


@pytest.mark.parametrize(("value", "expected"), [(None, 2), ("1", 1)])
def test_worker_prefetch_reaches_celery(monkeypatch, value, expected):
    from service.queue import make_celery

    if value is None:
        monkeypatch.delenv("NST_WORKER_PREFETCH", raising=False)
    else:
        monkeypatch.setenv("NST_WORKER_PREFETCH", value)
    clear_caches()
    conf = make_celery().conf
    assert conf.worker_prefetch_multiplier == expected
    assert conf.task_acks_late and conf.task_reject_on_worker_lost


def test_pool_processes_freeze_the_heap_they_start_with():
    """Full collections walked the imported heap with every few thousand labels (8% of the
    labeling loop, bench/label_profile.py); a pool process freezes it at start."""
    import gc

    from celery.signals import worker_process_init

    from workers.process_init import _freeze_the_imported_heap

    assert _freeze_the_imported_heap in [receiver() for _, receiver in worker_process_init.receivers]
    gc.unfreeze()
    try:
        _freeze_the_imported_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_task_retries_follow_the_settings_read_when_a_task_runs(monkeypatch):
    from workers.tasks import label_shard, validate_teacher

    monkeypatch.setenv("NST_TASK_MAX_RETRIES", "2")
    clear_caches()
    assert label_shard.max_retries == validate_teacher.max_retries == 2
