"""The models of a batch: each row runs on its own `model` column or the batch's `model=`,
is checked against that model's published schema before anything is submitted, and is priced
at that model's price.

A row names `owner/name` or `owner/name:version`, like `model=`. Every distinct model's schema
is read once (`tasks.model_schemas`, cached per process and on disk); a row the schema refuses
is reported with its line, field and model beside every other problem of the manifest
(`load_manifest(also=...)`), and the batch submits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prefect_seedream.flows.batch.manifest import BatchItem
from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.model_prices import price_per_image, required_price
from prefect_seedream.tasks.model_schemas import check_body, check_model_name, schema_for

if TYPE_CHECKING:
    from prefect_seedream.blocks.replicate_credentials import ReplicateCredentials

logger = logging.getLogger("prefect_seedream.models")


def model_of(item: BatchItem, default: str) -> str:
    """The model `item` runs on: its own `model` column, else the batch's."""
    return item.model or default


def model_problems(items: Iterable[BatchItem], default: str,
                   credentials: ReplicateCredentials | str | None) -> list[tuple[int, str]]:
    """`(line, problem)` for every item its model's published schema refuses (the problem
    names field and model). Reads each model's schema once; makes no paid request."""
    from prefect_seedream.tasks.connections import replicate_api

    api = replicate_api(credentials)
    schemas: dict[str, dict[str, Any] | None] = {}
    refused: dict[str, InvalidInput] = {}
    problems: list[tuple[int, str]] = []
    for item in items:
        model = model_of(item, default)
        if model not in schemas and model not in refused:
            try:
                schemas[model] = schema_for(check_model_name(model), api)
            except InvalidInput as exc:  # unknown model or version: every row of it says so
                refused[model] = exc
            if schemas.get(model, {}) is None:
                logger.warning("cannot read %s's published schema; checking its rows against "
                               "the bundled Seedream 4 rules", model)
        try:
            if model in refused:
                raise refused[model]
            placeholders = [f"https://source.invalid/{i}" for i in range(len(item.images))]
            check_body(item.request(placeholders).to_request(), model, schemas[model],
                       warn=False)
        except InvalidInput as exc:
            problems.append((item.line, f"line {item.line}: {exc}"))
    return problems


def batch_prices(items: Iterable[BatchItem], default: str, *, given: float | None,
                 setting: float | None, capped: bool,
                 log: logging.Logger | logging.LoggerAdapter[logging.Logger]
                 ) -> dict[str, float]:
    """The price per image of every model the batch runs on.

    `given` (the batch's `price_per_image_usd`) prices every model; else `setting`
    (`SEEDREAM_PRICE_PER_IMAGE_USD`), else the model's own (`tasks.model_prices`). With a cost
    cap (`capped`) a model of unknown price is refused before anything runs; without one it
    counts $0 and a warning says so.
    """
    prices: dict[str, float] = {}
    for model in sorted({model_of(item, default) for item in items} | {default}):
        price = given if given is not None else price_per_image(model, setting)
        if price is None and capped:
            price = required_price(model, None, "a batch with max_cost_usd")
        if price is None:
            log.warning("No price per image is known for %s: the estimate and costs show $0; "
                        "set SEEDREAM_PRICE_PER_IMAGE_USD", model)
            price = 0.0
        prices[model] = price
    return prices


def worst_cost(items: Iterable[BatchItem], default: str, prices: Mapping[str, float]) -> float:
    """Dollars if every item returns all the images it may."""
    return round(sum(item.max_images * prices[model_of(item, default)] for item in items), 4)


__all__ = ["batch_prices", "model_of", "model_problems", "worst_cost"]
