"""The sandbox as a newcomer meets it: `seedream sandbox` in one terminal, Replicate's own example
for Seedream 4 in another, and a JPEG to open at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXAMPLE = """
import replicate

output = replicate.run(
    "bytedance/seedream-4",
    input={"prompt": "a cozy reading nook, watercolor", "size": "1K", "aspect_ratio": "4:3"},
)
with open("output_0.jpg", "wb") as file:
    file.write(output[0].read())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_replicates_own_example_runs_against_seedream_sandbox(tmp_path: Path) -> None:
    seedream = Path(sys.executable).with_name("seedream")
    port = free_port()
    server = subprocess.Popen([str(seedream), "sandbox", "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        exports = {}
        for _ in range(20):
            line = server.stdout.readline()
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
            if len(exports) == 2:
                break
        assert exports["REPLICATE_BASE_URL"] == f"http://127.0.0.1:{port}"
        env = {**os.environ, **exports}
        result = subprocess.run([sys.executable, "-c", EXAMPLE], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        image = Image.open(tmp_path / "output_0.jpg")
        assert (image.format, image.size) == ("JPEG", (1152, 864))
    finally:
        server.terminate()
        server.wait(timeout=30)
