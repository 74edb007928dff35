"""Test fixtures for the LLM clients: real servers on loopback, started once per session.

- `llama_server`: llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`) on the
  embedded SmolLM2 GGUF, started once per session.
- `start_llama_server()`: the same, for a test that needs a server of its own (to kill it).
- `FlakyProxy`: a tiny real HTTP proxy in front of a server that answers 503 to the first attempt
  of every second distinct request, so retries are exercised deterministically.

`tests/test_llm_openai.py` imports `llama_server` itself; to share it with other test modules,
import it once in `tests/conftest.py` instead (`from llm_fixtures import llama_server  # noqa: F401`).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from synth.llm.models import embedded_gguf

LOOPBACK = "127.0.0.1"
SERVER_MODEL = "smollm2"
"""The model name the test server answers to (`--model_alias`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    process: subprocess.Popen
    base_url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def start_llama_server(log_dir: Path, ready_timeout_s: float = 120.0) -> LlamaServer:
    """Start llama.cpp's server on a free loopback port and wait until it answers."""
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (scripts/setup.sh)")
    port = free_port()
    log = log_dir / f"llama-server-{port}.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(embedded_gguf()),
        "--model_alias", SERVER_MODEL,
        "--host", LOOPBACK,
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "1",  # robust when the test machine is busy: spinning threads stall there
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = LlamaServer(process, f"http://{LOOPBACK}:{port}/v1", log)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"llama.cpp server not ready after {ready_timeout_s}s; see {log}")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


class FlakyProxy:
    """A loopback HTTP proxy that fails the first attempt of every second distinct request with 503."""

    def __init__(self, upstream: str):
        target = httpx.URL(upstream)
        self.upstream_host, self.upstream_port = target.host, target.port
        self.prefix = target.path.rstrip("/")  # e.g. /v1
        self.failed = 0
        self.forwarded = 0
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}{self.prefix}"

    def should_fail(self, body: bytes) -> bool:
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            first_time = key not in self._seen
            if first_time:
                self._seen[key] = len(self._seen)
            fail = first_time and self._seen[key] % 2 == 1
            self.failed += fail
            self.forwarded += not fail
            return fail

    def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=300)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/json")
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.should_fail(body):
                    self._reply(503, b'{"error": "overloaded, try again"}', "application/json")
                    return
                self._reply(*proxy.forward("POST", self.path, body, {"Content-Type": "application/json"}))

            def do_GET(self) -> None:
                self._reply(*proxy.forward("GET", self.path, b"", {}))

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        return Handler

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
