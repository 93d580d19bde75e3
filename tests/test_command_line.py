"""The `seedream` command as a person or a script uses it: output, saved copies, exit codes.

Most tests run the installed console script in a subprocess, against the session's sandbox and
moto's S3 server, and assert on what a user sees: stdout, stderr and the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from prefect_seedream.cli import (
    EXIT_AUTH,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORAGE,
    main,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

SEEDREAM = Path(sys.executable).with_name("seedream")
TEMPORARY_SERVER = "seedream: starting a temporary Prefect server (set PREFECT_API_URL to skip)..."


def seedream(*args: str, env: dict[str, str],
             timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the `seedream` command as a shell would."""
    return subprocess.run([str(SEEDREAM), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def shell(seedream_sandbox: Any) -> dict[str, str]:
    """A user's environment: a token for the sandbox and the session's Prefect server, no S3
    defaults (every test names its bucket and endpoint on the command line)."""
    from prefect.settings import PREFECT_API_URL

    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("SEEDREAM_", "REPLICATE_", "PREFECT_API_URL"))}
    env.update(PREFECT_API_URL=str(PREFECT_API_URL.value()),
               REPLICATE_API_TOKEN=seedream_sandbox.api_token,
               REPLICATE_BASE_URL=seedream_sandbox.base_url)
    return env


def error_and_hint(stderr: str) -> list[str]:
    """The last two lines of stderr, which must be the error and its hint."""
    lines = stderr.strip().splitlines()
    assert len(lines) >= 2, stderr
    assert lines[-2].startswith("seedream: error: "), stderr[-3000:]
    assert lines[-1].startswith("  hint: "), stderr[-3000:]
    return lines[-2:]


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


@pytest.mark.parametrize(("args", "error", "hint"), [
    (["generate", "a fox", "--size", "custom", "--width", "2048"],
     "size='custom' needs both width and height", "--width, --height"),
    (["generate", "a fox", "--size", "custom", "--width", "5000", "--height", "1024"],
     "width: Input should be less than or equal to 4096", "--width"),
    (["generate", "a fox", "--width", "2048"], "only used with size='custom'", "--size"),
    (["generate", "a fox", "--aspect-ratio", "5:4"], "aspect_ratio: Input should be",
     "--aspect-ratio"),
    (["generate", "a fox", "--max-images", "16"], "max_images: Input should be less than",
     "--max-images"),
    (["generate", "a fox", "--max-images", "0"], "max_images: Input should be greater than",
     "--max-images"),
    (["generate", ""], "prompt is empty", 'seedream generate "'),
    (["generate", "  \t "], "prompt is empty", 'seedream generate "'),
    (["edit", "   ", "s3://any-bucket/photo.jpg"], "prompt is empty", "the instruction"),
    (["edit", "make it night"], "edit needs at least one image", 'seedream edit "'),
    (["edit", "make it night", "photo.jpg"], "'photo.jpg' is not an s3:// URI", "--sandbox"),
], ids=["custom-without-height", "width-too-big", "width-without-custom", "aspect-ratio",
        "max-images-16", "max-images-0", "empty-prompt", "blank-prompt", "blank-instruction",
        "edit-without-image", "edit-local-file"])
def test_input_the_command_can_check_is_refused_before_prefect_or_replicate_is_used(
    args: list[str], error: str, hint: str, shell: dict[str, str], seedream_sandbox: Any,
    bucket: str, s3_endpoint: str, tmp_path: Path,
) -> None:
    del shell["PREFECT_API_URL"]  # so anything past the checks would start a temporary server
    shell["PREFECT_HOME"] = str(tmp_path)
    result = seedream(*args, "--bucket", bucket, "--endpoint-url", s3_endpoint, env=shell)
    assert result.returncode == EXIT_INPUT, result.stderr
    error_line, hint_line = result.stderr.splitlines()  # these two lines and nothing else
    assert error_line.startswith("seedream: error: ") and error in error_line
    assert hint_line.startswith("  hint: ") and hint in hint_line
    assert not (tmp_path / "prefect.db").exists(), "a temporary Prefect server was started"
    assert seedream_sandbox.predictions() == []


def test_refused_input_creates_no_flow_run_on_the_prefect_server(
    shell: dict[str, str], bucket: str, s3_endpoint: str,
) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        before = client.count_flow_runs()
        result = seedream("generate", "a fox", "--max-images", "20", "--bucket", bucket,
                          "--endpoint-url", s3_endpoint, env=shell)
        after = client.count_flow_runs()
    assert result.returncode == EXIT_INPUT
    assert "max_images" in error_and_hint(result.stderr)[0]
    assert after == before


@pytest.mark.parametrize(("drop", "args", "code", "error", "hint"), [
    ("SEEDREAM_BUCKET", ["--endpoint-url", "{s3}"], EXIT_INPUT,
     "no S3 bucket to store the images in", "pass --bucket (or set SEEDREAM_BUCKET)"),
    ("REPLICATE_API_TOKEN", ["--bucket", "{bucket}", "--endpoint-url", "{s3}"], EXIT_AUTH,
     "no Replicate API token", "export REPLICATE_API_TOKEN=r8_..."),
], ids=["no-bucket", "no-token"])
def test_a_missing_bucket_or_token_names_the_flag_or_variable_to_set(
    drop: str, args: list[str], code: int, error: str, hint: str, shell: dict[str, str],
    seedream_sandbox: Any, bucket: str, s3_endpoint: str,
) -> None:
    shell.pop(drop, None)
    filled = [arg.format(s3=s3_endpoint, bucket=bucket) for arg in args]
    result = seedream("generate", "a fox", "--size", "1K", *filled, env=shell)
    assert result.returncode == code
    error_line, hint_line = result.stderr.splitlines()  # at once: nothing was started
    assert error_line == f"seedream: error: {error}"
    assert hint_line.startswith("  hint: ") and hint in hint_line
    assert seedream_sandbox.predictions() == []


def test_endpoint_url_and_prefix_flags_put_the_images_where_asked(
    shell: dict[str, str], bucket: str, s3_endpoint: str, s3_client: Any, tmp_path: Path,
) -> None:
    result = seedream("generate", "a fox in snow", "--size", "1K", "--bucket", bucket,
                      "--endpoint-url", s3_endpoint, "--prefix", "shoots/fox",
                      "--out", str(tmp_path), env=shell)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    (uri,) = [line.split()[0] for line in result.stdout.splitlines()
              if line.strip().startswith("s3://")]
    assert uri.startswith(f"s3://{bucket}/shoots/fox/")
    key = uri.removeprefix(f"s3://{bucket}/")
    assert s3_client.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    assert len(list(tmp_path.glob("*.jpg"))) == 1
    assert f"storing the images in s3://{bucket}/shoots/fox/" in result.stderr
    assert "temporary Prefect server" not in result.stderr  # PREFECT_API_URL is set
    assert "error" not in result.stderr


def test_a_repeated_command_with_a_request_id_pays_once(
    shell: dict[str, str], bucket: str, s3_endpoint: str, seedream_sandbox: Any, tmp_path: Path,
) -> None:
    """A cron job retried by hand, or a ticket submitted twice: `--request-id` makes the second
    command re-attach to the first one's prediction and print the same images."""
    uris = []
    for _ in range(2):
        result = seedream("generate", "a fox in snow", "--size", "1K", "--bucket", bucket,
                          "--endpoint-url", s3_endpoint, "--request-id", "ticket-481",
                          "--no-copies", env=shell)
        assert result.returncode == EXIT_OK, result.stderr[-3000:]
        uris.append([line.split()[0] for line in result.stdout.splitlines()
                     if line.strip().startswith("s3://")])
    assert uris[0] == uris[1] and len(uris[0]) == 1
    assert seedream_sandbox.counters()["creates"] == 1


def test_batch_takes_the_same_endpoint_url_and_prefix_flags(
    shell: dict[str, str], bucket: str, s3_endpoint: str, s3_client: Any, tmp_path: Path,
) -> None:
    manifest = tmp_path / "prompts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a teapot, take {i}",
                                            "size": "1K"}) + "\n" for i in range(2)))
    result = seedream("batch", str(manifest), "--bucket", bucket, "--endpoint-url", s3_endpoint,
                      "--prefix", "nightly", env=shell)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert f"Results manifest: s3://{bucket}/nightly/" in result.stdout
    keys = [item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(key.endswith(".jpg") for key in keys) == 2
    assert all(key.startswith("nightly/") for key in keys)


def test_a_refused_token_from_the_environment_is_named_as_such(
    shell: dict[str, str], seedream_sandbox: Any, bucket: str, s3_endpoint: str,
) -> None:
    shell["REPLICATE_API_TOKEN"] = "r8_not_the_right_one"
    result = seedream("generate", "a fox", "--size", "1K", "--bucket", bucket,
                      "--endpoint-url", s3_endpoint, "--no-copies", env=shell)
    assert result.returncode == EXIT_AUTH
    error, hint = error_and_hint(result.stderr)
    assert "Replicate refused the API token" in error
    assert "the token came from REPLICATE_API_TOKEN" in error
    assert "as REPLICATE_API_TOKEN, or pass --credentials" in hint
    assert "ReplicateCredentials block" not in result.stderr  # no block was involved
    assert "r8_not_the_right_one" not in result.stdout + result.stderr
    assert seedream_sandbox.predictions() == []


def test_a_refused_token_from_a_block_names_the_block(
    shell: dict[str, str], seedream_sandbox: Any, bucket: str, s3_endpoint: str,
) -> None:
    from pydantic import SecretStr

    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

    ReplicateCredentials(api_token=SecretStr("r8_stale_token_in_block"),
                         base_url=seedream_sandbox.base_url).save("cli-stale", overwrite=True)
    del shell["REPLICATE_API_TOKEN"]
    result = seedream("generate", "a fox", "--size", "1K", "--bucket", bucket,
                      "--endpoint-url", s3_endpoint, "--credentials", "cli-stale",
                      "--no-copies", "--debug", env=shell)
    assert result.returncode == EXIT_AUTH
    error, hint = error_and_hint(result.stderr)
    assert "the token came from the ReplicateCredentials block 'cli-stale' (--credentials)" in error
    assert "in the block 'cli-stale'" in hint
    assert "r8_stale_token_in_block" not in result.stdout + result.stderr  # --debug included


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_error_is_one_line_and_a_hint_with_the_traceback_only_under_debug(
    debug: bool, shell: dict[str, str], seedream_sandbox: Any, s3_endpoint: str,
) -> None:
    result = seedream("generate", "a fox", "--size", "1K", "--bucket", "no-such-bucket-here",
                      "--endpoint-url", s3_endpoint, "--no-copies",
                      *(["--debug"] if debug else []), env=shell)
    assert result.returncode == EXIT_STORAGE
    error, hint = error_and_hint(result.stderr)
    assert error == ("seedream: error: cannot write to bucket 'no-such-bucket-here' "
                     "(ClientError); nothing was paid for")
    assert hint == (f"  hint: check --bucket and --endpoint-url ({s3_endpoint}), and that your "
                    "AWS credentials can write there")
    assert ("Traceback (most recent call last)" in result.stderr) is debug
    assert (" | ERROR   | " in result.stderr) is debug  # Prefect's own log
    if not debug:
        assert all(line.startswith(("seedream: ", "  ")) for line in result.stderr.splitlines())
    assert seedream_sandbox.predictions() == []


def test_edit_of_an_s3_image_never_prints_its_presigned_url_or_the_token(
    shell: dict[str, str], seedream_sandbox: Any, bucket: str, s3_endpoint: str, s3_client: Any,
    tmp_path: Path,
) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (1600, 1200), "navy").save(photo)
    s3_client.upload_file(str(photo), bucket, "in/photo.jpg")
    result = seedream("edit", "add a moon", f"s3://{bucket}/in/photo.jpg", "--size", "1K",
                      "--bucket", bucket, "--endpoint-url", s3_endpoint, "--no-copies",
                      "--debug", env=shell)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    (prediction,) = seedream_sandbox.predictions()
    assert prediction["status"] == "succeeded"
    shown = result.stdout + result.stderr
    assert "X-Amz-Signature" not in shown and "Signature=" not in shown
    assert seedream_sandbox.api_token not in shown


def test_progress_names_the_temporary_server_then_the_prediction_status(
    shell: dict[str, str], seedream_sandbox: Any, bucket: str, s3_endpoint: str, tmp_path: Path,
) -> None:
    del shell["PREFECT_API_URL"]
    shell.update(PREFECT_HOME=str(tmp_path / "prefect"), SEEDREAM_SYNC_WAIT_SECONDS="0")
    seedream_sandbox.configure(queue_seconds=1.0, run_seconds=1.0)
    result = seedream("generate", "a fox", "--size", "1K", "--bucket", bucket,
                      "--endpoint-url", s3_endpoint, "--no-copies", env=shell, timeout=280)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    (prediction,) = seedream_sandbox.predictions()
    phases = [line for line in result.stderr.splitlines() if line.startswith("seedream: ")]
    server = phases.index(TEMPORARY_SERVER)
    storing = phases.index(f"seedream: prediction {prediction['id']} succeeded; storing the "
                           f"images in s3://{bucket}/seedream/...")
    assert server < storing
    statuses = [p for p in phases[server:storing] if p.startswith("seedream: prediction ")]
    assert statuses and all(" is starting" in p or " is processing" in p for p in statuses)
    assert "waiting for Seedream and S3" not in result.stderr


def test_ctrl_c_cancels_the_prediction_and_exits_130(
    seedream_sandbox: Any, bucket: str, s3_endpoint: str, record_outcome: Any,
    shell: dict[str, str],
) -> None:
    import signal
    import time

    seedream_sandbox.configure(run_seconds=60)
    process = subprocess.Popen(
        [str(SEEDREAM), "generate", "a slow one", "--size", "1K", "--bucket", bucket,
         "--endpoint-url", s3_endpoint, "--no-copies"],
        env=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    assert process.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert prediction["status"] == "canceled"
    record_outcome("Ctrl-C in `seedream generate`", "cancelled the prediction, exit code 130",
                   created=1, left_running=int(prediction["status"] in ("starting", "processing")))
