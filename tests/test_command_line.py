"""The `seedream` command as a person or a script uses it: output, saved copies, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flows.command_line import EXIT_AUTH, EXIT_INPUT, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_generate_on_the_embedded_sandbox_prints_uris_and_saves_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["generate", "a fox in snow", "--sandbox", "--size", "1K",
                 "--max-images", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    uris = [line.split()[0] for line in out.splitlines() if line.strip().startswith("s3://")]
    assert len(uris) == 2
    copies = sorted(tmp_path.glob("*.jpg"))
    assert len(copies) == 2
    assert Image.open(copies[0]).size == (1024, 1024)


def test_edit_uploads_a_local_file_to_the_local_s3_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "photo.jpg"
    Image.new("RGB", (1600, 1200), "navy").save(source)
    code = main(["edit", "add a moon", str(source), "--sandbox", "--size", "1K",
                 "--out", str(tmp_path / "out")])
    assert code == EXIT_OK
    (copy,) = (tmp_path / "out").glob("*.jpg")
    width, height = Image.open(copy).size
    assert abs(width / height - 4 / 3) < 0.02


def test_invalid_input_exits_2_with_the_field_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "x", "--sandbox", "--size", "custom", "--width", "2048"])
    assert code == EXIT_INPUT
    assert "width and height" in capsys.readouterr().err


def test_refused_token_exits_3(
    seedream_sandbox: Any, bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_not_the_right_one")
    monkeypatch.setenv("REPLICATE_BASE_URL", seedream_sandbox.base_url)
    monkeypatch.setenv("SEEDREAM_S3_ENDPOINT_URL", s3_endpoint)
    code = main(["generate", "x", "--size", "1K", "--bucket", bucket, "--no-copies"])
    err = capsys.readouterr().err
    assert code == EXIT_AUTH
    assert "AuthenticationFailed" in err and "r8_not_the_right_one" not in err


def test_ctrl_c_cancels_the_prediction_and_exits_130(
    seedream_sandbox: Any, bucket: str, s3_endpoint: str, record_outcome: Any,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    seedream_sandbox.configure(run_seconds=60)
    env = {
        **os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
        "REPLICATE_API_TOKEN": seedream_sandbox.api_token,
        "REPLICATE_BASE_URL": seedream_sandbox.base_url, "SEEDREAM_S3_ENDPOINT_URL": s3_endpoint,
    }
    seedream = Path(sys.executable).with_name("seedream")
    process = subprocess.Popen(
        [str(seedream), "generate", "a slow one", "--size", "1K", "--bucket", bucket,
         "--no-copies"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not seedream_sandbox.predictions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seedream_sandbox.predictions(), "the command never created a prediction"
        time.sleep(1.0)  # let it settle into polling
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    (prediction,) = seedream_sandbox.predictions()
    assert process.returncode == 130, err[-2000:]
    assert prediction["status"] == "canceled"
    record_outcome("Ctrl-C in `seedream generate`", "cancelled the prediction, exit code 130",
                   created=1, left_running=int(prediction["status"] in ("starting", "processing")))
