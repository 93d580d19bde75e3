"""The Prefect secret block that holds a Replicate API token."""

from __future__ import annotations

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr, field_validator


class ReplicateCredentials(CredentialsBlock):
    """A Replicate API token, and optionally the API's base URL (a proxy or the local sandbox).

    The token is always handed to the client explicitly, so the `replicate` client's silent
    fallback to `REPLICATE_API_TOKEN` never decides who pays for a flow that was given a block.

    Example:
        ```python
        from prefect_seedream.blocks import ReplicateCredentials

        credentials = ReplicateCredentials.load("BLOCK_NAME")
        client = credentials.get_client()
        ```
    """

    _block_type_name = "Seedream Replicate Credentials"
    _block_type_slug = "seedream-replicate-credentials"
    _logo_url = HttpUrl("https://avatars.githubusercontent.com/u/60410876?s=200&v=4")
    _documentation_url = HttpUrl("https://replicate.com/docs/topics/security/api-tokens")

    api_token: SecretStr = Field(
        default=...,
        description="The Replicate API token (r8_...), kept secret by Prefect.",
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "The Replicate API base URL without /v1, for a proxy or the local sandbox; "
            "None means https://api.replicate.com."
        ),
    )

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("api_token is empty; paste a token from replicate.com/account")
        return value

    @classmethod
    def from_secret_block(cls, name: str, *, base_url: str | None = None) -> ReplicateCredentials:
        """Build credentials from a plain Prefect `Secret` block saved under `name`."""
        from prefect.blocks.system import Secret

        secret: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        return cls(api_token=SecretStr(str(secret.get())), base_url=base_url)

    def get_client(self, **kwargs: Any) -> Any:
        """A `replicate.Client` authenticated with this token (never the environment's)."""
        from replicate.client import Client

        token = self.api_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return Client(api_token=token, base_url=self.base_url, headers=headers, **kwargs)
