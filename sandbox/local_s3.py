"""A local S3 server (moto's standalone server) for the offline quickstart and tests.

moto checks a conditional write's precondition and then writes, with nothing in between held:
two `PutObject(IfNoneMatch="*")` arriving at once can both succeed, where S3 lets exactly one
through. The prediction ledger, the spend limit and the final PUT of every image rest on that
guarantee, so `S3Server` runs the conditional writes of one key one at a time (writes to other
keys stay concurrent), and keeps reads of the key out of them: moto's `CopyObject` shows the
new key before its metadata. moto also ignores `If-None-Match` on `CopyObject`, which S3 honours
(412 when the key exists), and stores a PUT whatever `x-amz-checksum-sha256` it names, where S3
refuses a body that does not match (400 BadDigest); `S3Server` answers both as S3 does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

_CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")
_STRIPES = 256
_PRECONDITION_FAILED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>'
    b"<Message>At least one of the pre-conditions you specified did not hold</Message>"
    b"<Condition>If-None-Match</Condition></Error>"
)

_BAD_DIGEST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
    b"<Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
)


def _bad_digest_checked(environ: dict[str, Any]) -> bool:
    """Whether a PUT's body matches the `x-amz-checksum-sha256` it names, as S3 checks (moto
    stores whatever it is told). The body is read here and handed on to moto unchanged."""
    if "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", ""):
        return True  # the checksum is a trailer of the chunked body; moto reads it there
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return bool(digest == environ["HTTP_X_AMZ_CHECKSUM_SHA256"])


class AtomicConditionalWrites:
    """WSGI middleware: a write carrying `If-Match`/`If-None-Match` runs alone among the
    conditional writes and the reads of its key, start to end, as S3 applies it atomically; a
    copy with `If-None-Match: *` onto an existing key fails with 412, as on S3; a PUT whose body
    does not match its `x-amz-checksum-sha256` fails with 400 BadDigest, as on S3.

    Keys share one of `_STRIPES` locks by hash, so memory stays bounded however many keys a
    bench writes; two keys on one stripe only wait for each other."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.locks = [threading.Lock() for _ in range(_STRIPES)]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") == "PUT" and environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
                and not _bad_digest_checked(environ)):
            start_response("400 Bad Request", [("Content-Type", "application/xml"),
                                               ("Content-Length", str(len(_BAD_DIGEST)))])
            return [_BAD_DIGEST]
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE") and any(
                environ.get(name) for name in _CONDITIONS):
            with self._lock_of(environ):
                if (environ.get("HTTP_X_AMZ_COPY_SOURCE")
                        and environ.get("HTTP_IF_NONE_MATCH") == "*"
                        and self._exists(environ)):
                    start_response("412 Precondition Failed",
                                   [("Content-Type", "application/xml"),
                                    ("Content-Length", str(len(_PRECONDITION_FAILED)))])
                    return [_PRECONDITION_FAILED]
                return list(self.app(environ, start_response))
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and environ.get("PATH_INFO", "/"
                                                                           ) != "/":
            # moto's CopyObject makes the key visible before it sets the new metadata: a read
            # between them sees an object with none, which S3 never shows. A read of a key waits
            # out a conditional write of it in progress, and cannot land inside one.
            with self._lock_of(environ):
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    def _lock_of(self, environ: dict[str, Any]) -> threading.Lock:
        """The stripe lock of the request's key (host and path)."""
        target = f"{environ.get('HTTP_HOST', '')}{environ.get('PATH_INFO', '')}"
        return self.locks[hash(target) % _STRIPES]

    def _exists(self, environ: dict[str, Any]) -> bool:
        """Ask moto itself with a HEAD of the copy's destination (same host, path, auth)."""
        head = {name: value for name, value in environ.items()
                if name not in _CONDITIONS and name != "HTTP_X_AMZ_COPY_SOURCE"}
        head.update({"REQUEST_METHOD": "HEAD", "QUERY_STRING": "", "CONTENT_LENGTH": "0"})
        statuses: list[str] = []

        def record(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
            statuses.append(status)
            return lambda _data: None

        for _ in self.app(head, record):
            pass
        return bool(statuses) and statuses[0].startswith("200")


class S3Server:
    """moto's S3 server in a thread of this process, with conditional writes made atomic.

    Example:
        ```python
        from prefect_seedream.sandbox.local_s3 import S3Server

        server = S3Server().start()
        print(server.endpoint_url)
        server.stop()
        ```
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.endpoint_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> S3Server:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local S3 server needs moto: pip install 'prefect-seedream[sandbox]'"
            ) from exc
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        app = AtomicConditionalWrites(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self.host, self.port, app, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="local-s3")
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class LocalS3:
    """The local S3 server (`S3Server`) on a free loopback port, with a bucket ready to use.

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
        self._server: S3Server | None = None
        self.endpoint_url = ""

    def start(self) -> LocalS3:
        self._server = S3Server(self.host, self.port).start()
        self.endpoint_url = self._server.endpoint_url
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



def main(argv: list[str] | None = None) -> None:
    """`python -m prefect_seedream.sandbox.local_s3 --port 9000`: serve until interrupted."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    server = S3Server(args.host, args.port).start()
    print(f"S3 on {server.endpoint_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
