"""Output files (`/files/{id}/{index}.jpg`, no auth) and the prediction web page (`/p/{id}`)."""

from __future__ import annotations

import base64
import html
import re
from typing import TYPE_CHECKING, Any

from prefect_seedream.sandbox.http_types import Request, Response, problem
from prefect_seedream.sandbox.rendering import (
    html_error_page,
    oversized_jpeg,
    render_jpeg,
    truncated_jpeg,
)

if TYPE_CHECKING:
    from prefect_seedream.sandbox.app import SandboxApp
    from prefect_seedream.sandbox.prediction_state import PredictionRecord

_FILE = re.compile(r"^/files/([a-z0-9]+)/(\d+)\.jpg$")
_PAGE = re.compile(r"^/p/([a-z0-9]+)$")


def handle(app: SandboxApp, request: Request) -> Response:
    """Serve an output file or a prediction page."""
    if request.method not in ("GET", "HEAD"):
        return problem(405, f"Method {request.method} not allowed", "Method not allowed")
    page = _PAGE.match(request.path)
    if page is not None:
        return _page(app, page.group(1))
    match = _FILE.match(request.path)
    if match is None:
        return problem(404, f"No file at {request.path}", "Not found")
    app.counters.request("files")
    status = app.faults.take_error("files")
    if status is not None:
        app.counters.add("faults_injected")
        return problem(status, "Injected by the sandbox on route 'files'; retry later")
    prediction_id, index = match.group(1), int(match.group(2))
    record = app.store.get(prediction_id)
    payload = None if record is None else app.prediction_json(record)
    if record is None or payload is None or not payload["output"] or index >= record.image_count:
        detail = "File not found"
        if payload is not None and payload["data_removed"]:
            detail = "File not found: the prediction's data was removed after the retention period"
        return problem(404, detail, "Not found")
    data = output_bytes(app, record, index)
    if request.method == "HEAD":
        return Response(200, data, "image/jpeg")
    epoch = app.counters.epoch
    app.counters.add("downloads", prediction_id=prediction_id, epoch=epoch)

    def sent(count: int) -> None:
        # Counted once the last byte is sent: a download begun before a reset (a test's
        # leftover connection, closed later) must not land in the counts of what follows.
        app.counters.add("download_bytes", count, prediction_id=prediction_id, epoch=epoch)

    return Response(200, data, "image/jpeg", {"Cache-Control": "private, max-age=3600"},
                    bytes_per_second=app.faults.download_rate(), on_sent=sent)


def output_bytes(app: SandboxApp, record: PredictionRecord, index: int) -> bytes:
    """The JPEG of one output (or what `corrupt_outputs` left of it), rendered once and cached."""
    cfg = app.config
    if cfg.prerendered_outputs and record.corruption is None and not record.sources:
        width, height = record.width, record.height
        return app.files.get(("prerendered", width, height), lambda: render_jpeg(
            width, height, f"sandbox bench output {width}x{height}", 0, 1, None,
            cfg.jpeg_quality, cfg.noise_sigma))

    def render() -> bytes:
        if record.corruption == "html":
            return html_error_page()
        data = render_jpeg(record.width, record.height, record.request.prompt, index,
                           record.image_count, record.sources, cfg.jpeg_quality, cfg.noise_sigma)
        if record.corruption == "oversized":
            return oversized_jpeg(data)
        return truncated_jpeg(data) if record.corruption == "truncated" else data

    return app.files.get((record.id, index), render)


def as_data_uris(app: SandboxApp, record: PredictionRecord, payload: dict[str, Any]) -> None:
    """Put the outputs inline as `data:` URIs, as Replicate's sync mode once did (late 2024)."""
    if payload.get("output"):
        payload["output"] = [
            "data:image/jpeg;base64," + base64.b64encode(output_bytes(app, record, i)).decode()
            for i in range(len(payload["output"]))
        ]


def _page(app: SandboxApp, prediction_id: str) -> Response:
    record = app.store.get(prediction_id)
    if record is None:
        return problem(404, f"Prediction {prediction_id} not found", "Not found")
    payload = app.prediction_json(record)
    images = "".join(
        f'<p><a href="{html.escape(url)}"><img src="{html.escape(url)}" width="480"></a></p>'
        for url in payload["output"] or []
    )
    body = (
        f"<!doctype html><title>Prediction {prediction_id}</title>"
        f"<h1>{html.escape(payload['model'])}: {html.escape(payload['status'])}</h1>"
        f"<p>{html.escape(record.request.prompt)}</p>{images}"
        f"<pre>{html.escape(payload['logs'] or '')}{html.escape(payload['error'] or '')}</pre>"
    )
    return Response(200, body.encode(), "text/html; charset=utf-8")
