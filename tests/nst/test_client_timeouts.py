"""A request whose answer is work done within it (a registration, a manifest build) waits for
that answer however long the server works; every other request keeps the client's timeout."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from nst.client import Client

WORK_S = 0.75  # the server's work on every request, three times the client's timeout below


class _SlowService(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(WORK_S)
        body = json.dumps({"id": 1}).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def slow_client():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.25) as client:
        yield client
    server.shutdown()
    server.server_close()


def test_a_registration_or_a_build_waits_for_its_answer(slow_client, tmp_path):
    assert slow_client.register_dataset(name="pool", kind="unlabeled", path="/data/pool") == {"id": 1}
    assert slow_client.register_teacher("/data/teacher.safetensors") == {"id": 1}
    checkpoint = tmp_path / "teacher.safetensors"
    checkpoint.write_bytes(b"weights")
    assert slow_client.upload_teacher(checkpoint) == {"id": 1}
    assert slow_client.create_manifest(job_ids=[1], labeled_dataset_id=2) == {"id": 1}


def test_any_other_request_keeps_the_clients_timeout(slow_client):
    with pytest.raises(httpx.ReadTimeout):
        slow_client.dataset(1)
