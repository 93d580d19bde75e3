"""What one output image costs, per model: the one table batch estimates, caps and the spend
limit read.

`SEEDREAM_PRICE_PER_IMAGE_USD` overrides it for every model. A model that is in neither has no
price: a batch with a cost cap, or a create under a spend limit, is refused before anything is
sent (unknown means stop).
"""

from __future__ import annotations

from prefect_seedream.tasks.errors import InvalidInput

PRICE_PER_IMAGE_USD: dict[str, float] = {
    "bytedance/seedream-4": 0.03,
    "bytedance/seedream-4.5": 0.04,
}


def base_model(model: str) -> str:
    """`owner/name` of `owner/name` or `owner/name:version`."""
    return model.partition(":")[0]


def price_per_image(model: str, override: float | None = None) -> float | None:
    """The price of one output image of `model` (a pinned version costs what its model does);
    `override` (the setting) wins; None when unknown."""
    if override is not None:
        return override
    return PRICE_PER_IMAGE_USD.get(base_model(model))


def required_price(model: str, override: float | None, why: str) -> float:
    """The price, or `InvalidInput` saying which setting to set before `why` can run."""
    price = price_per_image(model, override)
    if price is None:
        raise InvalidInput(
            f"no price per image is known for {model}, and {why} needs one: set "
            "SEEDREAM_PRICE_PER_IMAGE_USD (or price_per_image_usd=) first; nothing was sent")
    return price
