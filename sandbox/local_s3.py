"""A local S3 server (moto's standalone server) for the offline quickstart and tests."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any


class LocalS3:
    """moto's S3 server on a free loopback port, with a bucket ready to use.

    Example:
        ```python
        from prefect_seedream.sandbox.local_s3 import LocalS3

        with LocalS3(bucket="seedream-demo") as s3:
            print(s3.endpoint_url)
        ```
    """

    access_key_id = "sandbox"
    secret_access_key = "sandbox-secret"
    region_name = "us-east-1"

    def __init__(self, bucket: str = "seedream-demo", host: str = "127.0.0.1", port: int = 0):
        self.bucket = bucket
        self.host, self.port = host, port
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local S3 server needs moto: pip install 'prefect-seedream[sandbox]'"
            ) from exc
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region_name,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )

    def destination(self, prefix: str = "seedream") -> Any:
        """An `S3Destination` block pointing at this server."""
        from pydantic import SecretStr

        from prefect_seedream.blocks.s3_destination import S3Destination

        return S3Destination(
            bucket=self.bucket, prefix=prefix, endpoint_url=self.endpoint_url,
            region_name=self.region_name, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=SecretStr(self.secret_access_key),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

