"""What the `seedream` command says while it waits, phase by phase, on stderr.

Each phase is named when it begins (`seedream: starting a temporary Prefect server ...`) and
repeated every few seconds with its elapsed time, so a slow start is never blamed on Seedream and
a long run never looks hung. The prediction's status comes from the flow run's own log records.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from prefect_seedream.cli_output import EXIT_ERROR, Refused, redact

TEMPORARY_SERVER = "starting a temporary Prefect server (set PREFECT_API_URL to skip)"
_MIN_SERVER_STARTUP_SECONDS = 90  # Prefect's 20 s default is too short on a busy laptop
_CREATED = re.compile(r"^Created prediction (\S+) \((\w+)\)$")
_STATUS = re.compile(r"^Prediction (\S+) is (\w+)$")
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class Progress:
    """The current phase, printed when it changes and then every `every` seconds."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.stream, self.every = stream or sys.stderr, every
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._since = self._last = time.monotonic()
        self._silent = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="seedream-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """No more progress lines (before the result is printed); safe to call twice."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def phase(self, text: str) -> None:
        """Begin a phase (once: the same text twice prints nothing)."""
        with self._lock:
            if text == self._phase or self._silent or self._done.is_set():
                return
            self._phase, self._since = text, time.monotonic()
            self._last = self._since
        self._print(f"seedream: {text}...")

    def note(self, text: str) -> None:
        """A warning from the flow run worth a line of its own."""
        self._print(f"  note: {text}")

    def hand_over(self) -> None:
        """Stop printing phases: something else (the batch's progress bar) reports from now on."""
        with self._lock:
            self._silent = True

    def prediction(self, prediction_id: str, status: str, storing_in: str) -> None:
        if status == "succeeded":
            self.phase(f"prediction {prediction_id} succeeded; storing the images in {storing_in}")
        elif status in ("starting", "processing"):
            self.phase(f"prediction {prediction_id} is {status}"
                       + (" (queued on Replicate)" if status == "starting" else ""))
        else:
            self.phase(f"prediction {prediction_id} {status}")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._done.wait(min(0.5, self.every)):
            now = time.monotonic()
            with self._lock:
                due = self._phase and not self._silent and now - self._last >= self.every
                if due:
                    self._last = now
                    line = f"  ... {self._phase} ({now - self._since:.0f}s)"
            if due:
                self._print(line)


class _RunLogs(logging.Handler):
    """Turns the flow run's log records into phases (statuses) and notes (warnings)."""

    def __init__(self, progress: Progress, storing_in: str, secrets: list[str]) -> None:
        super().__init__(logging.INFO)
        self.progress, self.storing_in, self.secrets = progress, storing_in, secrets

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip()
        except Exception:  # a malformed record is Prefect's to report, not ours
            return
        if record.levelno >= logging.WARNING:
            # Tracebacks and "Finished in state Failed" repeat the error the command prints.
            if not record.exc_info and not message.startswith("Finished in state"):
                self.progress.note(redact(message.splitlines()[0], self.secrets))
            return
        if match := _CREATED.match(message) or _STATUS.match(message):
            self.progress.prediction(match[1], match[2], self.storing_in)


@contextlib.contextmanager
def following_runs(progress: Progress, *, storing_in: str, secrets: list[str]) -> Iterator[None]:
    """Report the flow run's prediction statuses and warnings while the block runs."""
    import prefect  # noqa: F401  (Prefect configures its loggers on import; ours goes on after)

    handler = _RunLogs(progress, storing_in, secrets)
    loggers = [logging.getLogger(name) for name in _RUN_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def prefect_api(progress: Progress) -> None:
    """Make sure a Prefect API answers: `PREFECT_API_URL`'s, or a temporary server started now.

    The temporary server is Prefect's own (the one a flow call would start), started here so the
    wait has its own name and a deadline a busy machine can meet; Prefect stops it at exit.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    api = PREFECT_API_URL.value()
    if not api:
        progress.phase(TEMPORARY_SERVER)  # before the import: the server's modules are heavy
    if api:
        progress.phase(f"connecting to the Prefect server at {api}")
        try:
            httpx.get(f"{api.rstrip('/')}/health", timeout=10)
        except httpx.TransportError as exc:
            raise Refused(f"no Prefect server answers at PREFECT_API_URL={api} "
                          f"({type(exc).__name__})",
                          "start it (`prefect server start`), or unset PREFECT_API_URL and "
                          "seedream starts a temporary one", EXIT_ERROR) from exc
        return
    from prefect.server.api.server import SubprocessASGIServer

    timeout = max(_MIN_SERVER_STARTUP_SECONDS,
                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    try:
        SubprocessASGIServer().start(timeout=timeout)
    except Exception as exc:
        raise Refused(f"the temporary Prefect server did not start within {timeout} s",
                      "run `prefect server start` in another terminal and set "
                      "PREFECT_API_URL=http://127.0.0.1:4200/api", EXIT_ERROR) from exc
