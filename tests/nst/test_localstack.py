import subprocess
import sys
import time
from pathlib import Path

from nst.localstack import LocalStack


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
            if children:
                child = int(children[0])
                break
            time.sleep(0.05)
        assert child is not None
        with stack.paused():
            assert _eventually(lambda: _state(worker.pid) == "T" and _state(child) == "T")
        assert _eventually(lambda: _state(worker.pid) != "T" and _state(child) != "T")
    finally:
        stack.stop()
