"""The sandbox and moto's S3 server, each in its own process so their CPU and memory are not
the measured process's (as with the real Replicate and S3), driven over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

from bench.common import ROOT

TOKEN = "r8_sandbox_0000000000000000000000000000000000"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


class _Process:
    def __init__(self, argv: list[str]) -> None:
        self.port = free_port()
        self._argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Any:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        wait_port(self.port)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class SandboxProcess(_Process):
    """`python -m prefect_seedream.sandbox` on a free port, rate limits off, outputs as http URLs
    (as Replicate's https URLs, not inline data: URIs), in bench mode unless `prerendered` is
    False; admin over `/_sandbox/`."""

    def __init__(self, run_seconds: float = 2.0, *, prerendered: bool = True) -> None:
        # Bench mode by default: one JPEG per size, rendered once, so the sandbox's CPU per
        # prediction is small beside the client's it measures (figure (a) reports it).
        super().__init__([sys.executable, "-m", "prefect_seedream.sandbox", "--port", "{port}",
                          "--run-seconds", str(run_seconds), "--no-rate-limits",
                          "--http-outputs"] + (["--prerendered-outputs"] if prerendered else []))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_token = TOKEN

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}/_sandbox/{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def configure(self, **changes: Any) -> Any:
        return self._admin("POST", "config", changes)

    def counters(self) -> dict[str, Any]:
        return dict(self._admin("GET", "counters"))

    def predictions(self) -> list[dict[str, Any]]:
        return list(self._admin("GET", "predictions")["results"])

    def reset(self) -> None:
        self._admin("POST", "reset", {})


class MotoProcess(_Process):
    """moto's S3 server on a free port, conditional writes atomic as on S3
    (`python -m prefect_seedream.sandbox.local_s3`, the same server the tests use)."""

    def __init__(self) -> None:
        super().__init__([sys.executable, "-m", "prefect_seedream.sandbox.local_s3", "--port",
                          "{port}"])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
