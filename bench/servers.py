"""The sandbox and moto's S3 server, each in its own process so their CPU and memory are not
the measured process's (as with the real Replicate and S3), driven over loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
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


def postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries, or None when not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


class PostgresProcess(_Process):
    """A throwaway PostgreSQL cluster on a free loopback port, data in a temporary directory,
    run as the `postgres` system user (initdb refuses root); database `prefect`, trust auth."""

    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        super().__init__([])  # a free port; the cluster is started by __enter__
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _as_postgres(self, *argv: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv))

    def __enter__(self) -> PostgresProcess:
        data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(self._as_postgres(str(self.bin / "initdb"), "-D", str(data), "-U",
                                         "postgres", "--auth=trust", "-E", "UTF8"),
                       check=True, capture_output=True)
        self.proc = subprocess.Popen(
            self._as_postgres(str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                              "-h", "127.0.0.1", "-k", str(self.dir), "-c", "max_connections=200",
                              "-c", "fsync=on"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        for _ in range(100):  # the port opens before the server accepts logins
            done = subprocess.run(self._as_postgres(
                str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                "postgres", "prefect"),
                capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"createdb failed: {done.stderr.decode()[-500:]}")
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(None, None, None)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrefectServerProcess(_Process):
    """`prefect server start` on a free port, the UI off; on `database_url` (e.g. a
    `PostgresProcess`'s) or, without one, SQLite in a temporary PREFECT_HOME."""

    def __init__(self, database_url: str | None = None) -> None:
        super().__init__([sys.executable, "-m", "prefect", "server", "start", "--host",
                          "127.0.0.1", "--port", "{port}"])
        self.home = tempfile.mkdtemp(prefix="bench-prefect-")
        self.database_url = database_url
        self.api_url = f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> PrefectServerProcess:
        env = {**os.environ, "PREFECT_HOME": self.home, "PREFECT_SERVER_UI_ENABLED": "false",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_LOGGING_SERVER_LEVEL": "WARNING"}
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, cwd=self.home)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}")
        raise RuntimeError("prefect server never answered /api/health")

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(None, None, None)
        shutil.rmtree(self.home, ignore_errors=True)
