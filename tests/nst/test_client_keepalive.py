"""The client drops an idle connection before the server does, so a request is never sent on
a connection the server is closing (a race that lost an upload in a test)."""

import socket
import threading
import time

import pytest

from nst.client import KEEPALIVE_EXPIRY_S, Client

SERVER_KEEPALIVE_S = KEEPALIVE_EXPIRY_S + 0.5
RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'


def _serve(listener: socket.socket, connections: list[int]) -> None:
    """Answers on a kept-alive connection until it has been idle SERVER_KEEPALIVE_S; a request
    arriving later is the one that meets the server's close: no answer, connection closed."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        connections.append(1)
        with conn:
            last = None
            while conn.recv(65536):
                if last is not None and time.monotonic() - last > SERVER_KEEPALIVE_S:
                    break
                conn.sendall(RESPONSE)
                last = time.monotonic()


@pytest.fixture
def server():
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[int] = []
    thread = threading.Thread(target=_serve, args=(listener, connections), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
    listener.close()
    thread.join(timeout=5)


def test_a_request_after_the_servers_keepalive_goes_on_a_new_connection(server):
    url, connections = server
    with Client(url) as client:
        assert client.health() == {"status": "ok"}
        assert client.health() == {"status": "ok"}  # quick polls share the connection
        assert len(connections) == 1
        time.sleep(SERVER_KEEPALIVE_S + 0.2)
        assert client.health() == {"status": "ok"}
    assert len(connections) == 2


def test_the_expiry_is_shorter_than_the_keepalive_of_the_server_we_ship():
    import uvicorn

    assert uvicorn.Config(app=None).timeout_keep_alive > KEEPALIVE_EXPIRY_S
