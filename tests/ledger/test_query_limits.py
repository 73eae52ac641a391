"""The query endpoint cannot be exhausted: slow clients time out, requests beyond the thread
limit are refused with 503 at once, and service resumes when the slow ones are gone."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import duckdb
import pytest

from ledger import query


def test_slow_clients_time_out_and_extra_requests_get_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query, "MAX_REQUEST_THREADS", 2)
    monkeypatch.setattr(query._Handler, "timeout", 1.0)
    server = query.serve(duckdb.connect())
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/no-such-endpoint"
    try:
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for s in slow:
            s.sendall(b"GET /realms HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        time.sleep(0.3)  # let both occupy a request thread
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 503
        for s in slow:  # the request timeout ends them: the server closes without answering
            s.settimeout(5)
            started = time.monotonic()
            assert s.recv(1024) == b""
            assert time.monotonic() - started < 5
            s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    break
                assert exc.code == 503 and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()
