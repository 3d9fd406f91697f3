import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from cli import localstack
from cli.localstack import LocalStack


def _state(pid: int) -> str:
    # /proc/<pid>/stat: "pid (comm) state ..."; T is stopped.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _eventually(condition) -> bool:
    # A signal is delivered asynchronously: give the kernel a moment.
    deadline = time.monotonic() + 5
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_paused_stops_every_process_of_the_stack_and_continues_them(tmp_path):
    """bench/label_throughput.py times its bare loop with the stack paused; a child of a worker
    (a pool or decode process) must stop too, or it would still share the cores."""
    stack = LocalStack(tmp_path)
    parent_and_child = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    worker = subprocess.Popen([sys.executable, "-c", parent_and_child], start_new_session=True)
    stack.workers.append(worker)
    try:
        child = None
        for _ in range(100):
            children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
            # Only once the child runs sleep: before its exec, Python's vfork holds the parent in
            # the kernel, where a SIGSTOP stops the child and leaves the parent waiting on it.
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "sleep":
                child = int(children[0])
                break
            time.sleep(0.05)
        assert child is not None
        with stack.paused():
            assert _eventually(lambda: _state(worker.pid) == "T" and _state(child) == "T")
        assert _eventually(lambda: _state(worker.pid) != "T" and _state(child) != "T")
    finally:
        stack.stop()


def _group_is_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


# A stand-in for a worker: its child ignores SIGTERM, as a pool or decode process busy elsewhere
# may, and would outlive the parent that SIGTERM ends.
_STUBBORN_CHILD = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(120)"
)
_PARENT_WITH_STUBBORN_CHILD = (
    "import subprocess, sys, time\n"
    f"subprocess.Popen([sys.executable, '-c', {_STUBBORN_CHILD!r}])\n"
    "time.sleep(120)\n"
)


def _start_stubborn_worker(stack: LocalStack) -> subprocess.Popen:
    worker = subprocess.Popen(
        [sys.executable, "-c", _PARENT_WITH_STUBBORN_CHILD], start_new_session=True, stdout=subprocess.PIPE
    )
    ready = worker.stdout.readline().strip()
    worker.stdout.close()
    assert ready == b"1"  # the child has set its handler
    stack.workers.append(worker)
    return worker


def test_stop_leaves_no_process_of_a_worker_group_behind(tmp_path):
    stack = LocalStack(tmp_path)
    worker = _start_stubborn_worker(stack)
    stack.stop()
    assert worker.poll() is not None
    assert _eventually(lambda: _group_is_gone(worker.pid))


def test_sigterm_of_the_owner_stops_the_stack(tmp_path):
    """The demo or a study terminated with SIGTERM must not leave its API and workers running:
    they are in their own sessions, so nothing else would stop them."""
    owner_code = (
        "import subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from cli.localstack import LocalStack\n"
        "with LocalStack(Path(sys.argv[1])) as stack:\n"
        "    worker = subprocess.Popen(['sleep', '120'], start_new_session=True)\n"
        "    stack.workers.append(worker)\n"
        "    print(worker.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    worker_pid = int(owner.stdout.readline())
    owner.stdout.close()
    try:
        owner.terminate()
        assert owner.wait(timeout=60) == 128 + signal.SIGTERM
        assert _eventually(lambda: _group_is_gone(worker_pid))
    finally:
        if owner.poll() is None:
            owner.kill()
        if not _group_is_gone(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)


def test_stop_interrupted_while_waiting_still_kills_every_group(tmp_path, monkeypatch):
    """A signal handler of the owner may raise inside stop()'s waits (PyTorch's does when one of
    the owner's loader processes dies): the groups not yet waited for must still go."""
    stack = LocalStack(tmp_path)
    first = _start_stubborn_worker(stack)
    second = _start_stubborn_worker(stack)

    def interrupted(*_args, **_kwargs):
        raise RuntimeError("a signal handler raised")

    monkeypatch.setattr(localstack, "_wait_for_exit_unreaped", interrupted)
    with pytest.raises(RuntimeError):
        stack.stop()
    assert first.returncode is not None and second.returncode is not None
    assert _eventually(lambda: _group_is_gone(first.pid) and _group_is_gone(second.pid))


def test_stop_leaves_a_group_whose_leader_was_reaped_before_alone(tmp_path):
    """A reaped leader's pid, its group's id, may have been given to an unrelated process."""
    stack = LocalStack(tmp_path)
    worker = _start_stubborn_worker(stack)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    try:
        stack.stop()
        assert not _group_is_gone(worker.pid)  # its straggler: not the stack's to kill any more
    finally:
        with suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
