"""The artifact a person reads in the Prefect UI: one row per stored image, with links.

Each row shows the image's preview (a small JPEG inline as a `data:` URI, made from the bytes
that were stored, see `prefect_seedream.tasks.s3_storage.previews`). Links point at the object
(S3 console, or the endpoint's path-style URL), never at a presigned URL, so no signature ever
lands in an artifact; an edit's source images are never shown, only what we stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from prefect_seedream.flows.spend_report import publish_spend
from prefect_seedream.tasks.s3_storage.previews import preview_data_uri

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination
    from prefect_seedream.tasks.replicate_client.prediction import Prediction
    from prefect_seedream.tasks.storage import StoredImage


def object_link(destination: S3Destination, bucket: str, key: str) -> str:
    """A browsable link to an object that carries no credentials."""
    if destination.endpoint_url:
        return f"{destination.endpoint_url.rstrip('/')}/{bucket}/{quote(key)}"
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key)}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def preview_cell(image: StoredImage, alt: str) -> str:
    """The markdown of an image's preview (`![alt](data:image/jpeg;base64,...)`), or its note.

    Only base64 text goes into the URI, so nothing in it can end the markdown link early.
    """
    if image.preview:
        return f"![{_cell(alt)}]({preview_data_uri(image.preview)})"
    return f"({_cell(image.preview_note or 'no preview')})"


def report_markdown(
    title: str, prediction: Prediction, stored: list[StoredImage], destination: S3Destination,
    *, seconds: float,
) -> str:
    """Markdown for the stored-images artifact."""
    predict = prediction.metrics.get("predict_time")
    lines = [
        f"### {_cell(title)[:200]}",
        "",
        f"Prediction `{prediction.id}` ({prediction.status.value}"
        + (f", `{_cell(prediction.model)[:120]}`" if prediction.model else "") + "); "
        f"{len(stored)} image(s) stored in {seconds:.1f}s"
        + (f", model time {predict:.1f}s" if isinstance(predict, (int, float)) else "")
        + ".",
        "",
        "| # | Preview | Image | Size | Bytes | SHA-256 | Prediction |",
        "|---|---|---|---|---|---|---|",
    ]
    for image in stored:
        link = object_link(destination, image.bucket, image.key)
        size = f"{image.width}x{image.height}"
        if image.size_note:  # stored anyway; the difference is recorded here and in S3
            size += f" (⚠ {_cell(image.size_note)})"
        lines.append(
            f"| {image.index} | {preview_cell(image, f'output {image.index}')} "
            f"| [{_cell(image.uri)}]({link}) | {size} "
            f"| {image.size_bytes:,} | `{image.sha256[:16]}…` | `{image.prediction_id}` |"
        )
    return "\n".join(lines)


def publish_report(
    title: str, prediction: Prediction, stored: list[StoredImage], destination: S3Destination,
    *, seconds: float,
) -> None:
    """Create the markdown artifact in the current flow run (sync path)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=report_markdown(title, prediction, stored, destination, seconds=seconds),
        key="seedream-images",
        description=f"Seedream images from prediction {prediction.id}",
        _sync=True,  # type: ignore[call-arg]
    )
    publish_spend(destination)  # the seedream-spend artifact, when a spend limit is set
