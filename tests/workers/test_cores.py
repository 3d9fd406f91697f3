"""A worker's pool processes share the host's cores (workers/cores.py): torch's threads and the
decode processes, so ``--concurrency N`` neither oversubscribes a CPU host nor starves a GPU."""

import pytest

from nst.config import SettingsError, get_settings
from workers import cores


@pytest.mark.parametrize(
    ("setting", "usable", "processes", "expected"),
    [
        ("auto", 2, 1, 2),  # this kind of host, one pool process: the count the benchmarks ran
        ("auto", 2, 2, 1),
        ("auto", 16, 1, 16),  # a 16-core GPU host, one GPU
        ("auto", 16, 8, 2),  # eight GPUs
        ("auto", 4, 8, 1),  # never none: more pool processes than cores
        (3, 16, 8, 3),  # a number is taken as it is
        (0, 16, 1, 0),  # 0: decode in the pool process itself
    ],
)
def test_decode_processes_are_each_pool_processes_share_of_the_cores(setting, usable, processes, expected):
    assert cores.decode_processes(setting, cores=usable, processes=processes) == expected


def test_the_pool_size_comes_from_the_workers_concurrency(monkeypatch):
    monkeypatch.setattr(cores, "_pool_processes", 1)
    cores.note_pool_processes(4)
    assert cores.pool_processes() == 4 and cores.share(16) == 4
    cores.note_pool_processes("auto")  # Celery resolves it only later: the whole host, as before
    assert cores.pool_processes() == 1


@pytest.mark.parametrize(("value", "expected"), [(None, "auto"), ("auto", "auto"), ("5", 5)])
def test_the_setting_is_auto_by_default_or_a_count(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("NST_DECODE_WORKERS", raising=False)
    else:
        monkeypatch.setenv("NST_DECODE_WORKERS", value)
    get_settings.cache_clear()
    assert get_settings().decode_workers == expected


@pytest.mark.parametrize("value", ["many", "65", "-1"])
def test_a_bad_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("NST_DECODE_WORKERS", value)
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match="NST_DECODE_WORKERS"):
        get_settings()
