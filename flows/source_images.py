"""Preparing edit sources: s3:// URIs become short-lived presigned URLs, checked before paying.

Each attempt presigns afresh, so what is sent differs from one attempt to the next; what each
source *is* (`prediction_ledger.source_identity`: an S3 object by its URI and ETag, read with the
same HEAD that checks it exists) does not, and names the request in the prediction ledger.

Sources come only from where the destination allows, and every check is made before any request
to the source (so a refusal says nothing about whether the object or host exists):

- `s3://` sources: the destination's own bucket, or one named in its `source_buckets`.
- URL sources: https only; the host is resolved first and refused when any address it resolves
  to is loopback, private, link-local or otherwise not public, unless the host is named in
  `SEEDREAM_SOURCE_PRIVATE_HOSTS` (plain http is accepted only for such hosts, on loopback);
  when `SEEDREAM_SOURCE_HOSTS` is set, only the hosts it names. The worker then connects to the
  address it checked (no second lookup), never follows a redirect, and reads at most
  `SEEDREAM_SOURCE_MAX_BYTES` of any source to size or hash it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from PIL import ImageFile

from prefect_seedream.blocks.s3_destination import parse_s3_uri
from prefect_seedream.tasks.errors import InvalidInput
from prefect_seedream.tasks.prediction_ledger import source_identity
from prefect_seedream.tasks.seedream_settings import SeedreamSettings, get_settings

if TYPE_CHECKING:
    from prefect_seedream.blocks.s3_destination import S3Destination

_HEADER_BYTES = 256 * 1024
_CHUNK = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class SourceRefused(InvalidInput):
    """An edit source is outside what the destination and the settings allow; the worker sent
    nothing to it, and nothing was paid for."""


class SignedUrl(str):
    """A URL this process presigned for an object in a bucket the destination may read.

    The worker may fetch it without the URL checks (its host is the destination's own S3
    endpoint); a URL that arrives from outside is a plain `str` and is always checked.
    """

    __slots__ = ()


@dataclass(frozen=True)
class PresignedSources:
    """Edit sources ready for one attempt.

    Attributes:
        urls: What is sent as `image_input`: presigned URLs for `s3://` sources (never log
            them), others as given.
        identities: What each source is, the same on every attempt (`source_identity`); pass
            them as `create_prediction(sources=...)`.
    """

    urls: list[str]
    identities: list[str]


def check_source_bucket(bucket: str, destination: S3Destination) -> None:
    """Refuse an `s3://` source in a bucket the destination may not read sources from.

    Made before any request, so the answer is the same whether or not the object exists.

    Raises:
        SourceRefused: Naming the bucket and where to allow it.
    """
    if destination.reads_sources_from(bucket):
        return
    raise SourceRefused(
        f"bucket {bucket!r} is not one this destination reads sources from (its own bucket "
        f"{destination.bucket!r} or its source_buckets); copy the image into "
        f"{destination.bucket!r}, or add {bucket!r} to the S3Destination's source_buckets"
    )


def too_large(limit: int) -> SourceRefused:
    """The refusal of a source larger than `SEEDREAM_SOURCE_MAX_BYTES`."""
    return SourceRefused(f"the source is larger than {limit} bytes (SEEDREAM_SOURCE_MAX_BYTES); "
                         "use a smaller image or raise the setting")


def _shown(url: str) -> str:
    """A URL fit for an error: no user info or query string (either may carry a secret), no
    character that is not ASCII, at most 120 characters."""
    text = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = text.partition("://")
    if sep:
        netloc, slash, path = rest.partition("/")
        text = f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"
    return ascii(text[:120])


def _listed(host: str, port: int, entries: list[str]) -> bool:
    names = {entry.strip().lower() for entry in entries}
    return bool({host, f"{host}:{port}", f"[{host}]:{port}"} & names)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass(frozen=True)
class PinnedUrl:
    """Where the worker connects for a checked URL source: the address it checked, with the
    URL's own host sent as `Host` and as the TLS server name (certificates are still verified
    against the host)."""

    url: httpx.URL
    host_header: str
    server_name: str | None


def check_source_url(url: str, settings: SeedreamSettings | None = None) -> PinnedUrl:
    """Check a URL source against the rules above and resolve its host, before any request.

    Raises:
        SourceRefused: Naming the rule the URL breaks.
    """
    settings = settings or get_settings()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SourceRefused(f"{_shown(str(url))} is not a valid URL") from exc
    scheme, host = parsed.scheme.lower(), parsed.host.lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise SourceRefused(f"{_shown(url)} is not an https URL")
    if parsed.userinfo:
        raise SourceRefused(f"{_shown(url)} carries a user name or password; sources are read "
                            "without credentials (put the image in S3 instead)")
    port = parsed.port or _DEFAULT_PORTS[scheme]
    private_ok = _listed(host, port, settings.source_private_hosts)
    if settings.source_hosts and not private_ok and not _listed(host, port, settings.source_hosts):
        raise SourceRefused(f"{_shown(url)}: host {host!r} is not in SEEDREAM_SOURCE_HOSTS")
    if scheme == "http" and not private_ok:
        raise SourceRefused(f"{_shown(url)} is plain http; sources must be https URLs (http is "
                            "accepted only from loopback hosts in SEEDREAM_SOURCE_PRIVATE_HOSTS)")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise SourceRefused(f"{_shown(url)}: host {host!r} cannot be resolved") from exc
    addresses = [str(info[4][0]) for info in found]
    if not addresses:
        raise SourceRefused(f"{_shown(url)}: host {host!r} cannot be resolved")
    if not private_ok and not all(_public(a) for a in addresses):
        raise SourceRefused(
            f"{_shown(url)}: host {host!r} resolves to a loopback, private or link-local "
            "address, which the worker never fetches from (name the host in "
            "SEEDREAM_SOURCE_PRIVATE_HOSTS if it is yours)")
    if scheme == "http" and not all(_loopback(a) for a in addresses):
        raise SourceRefused(f"{_shown(url)} is plain http to a host off this machine; sources "
                            "must be https URLs")
    address = addresses[0].split("%", 1)[0]
    return PinnedUrl(url=parsed.copy_with(host=address),
                     host_header=parsed.netloc.decode("ascii"),
                     server_name=host if scheme == "https" else None)


@contextmanager
def open_source(url: str, *, client: httpx.Client | None = None,
                headers: dict[str, str] | None = None,
                settings: SeedreamSettings | None = None) -> Iterator[httpx.Response]:
    """A streamed GET of a source: checked and pinned (`check_source_url`) unless it is a
    `SignedUrl`; a redirect is refused, never followed.

    Raises:
        SourceRefused: The URL breaks a rule, or the server answered with a redirect.
        httpx.HTTPError: The request itself failed.
    """
    request_headers = dict(headers or {})
    extensions: dict[str, Any] = {}
    if isinstance(url, SignedUrl):
        target = httpx.URL(str(url))
    else:
        pinned = check_source_url(url, settings)
        target = pinned.url
        request_headers["Host"] = pinned.host_header
        if pinned.server_name:
            extensions["sni_hostname"] = pinned.server_name
    http = client or httpx.Client(timeout=15.0)
    try:
        with http.stream("GET", target, headers=request_headers, extensions=extensions,
                         follow_redirects=False) as response:
            if 300 <= response.status_code < 400:
                raise SourceRefused(
                    f"{_shown(url)} answered with a redirect (HTTP {response.status_code}); "
                    "the worker does not follow redirects: pass the image's final URL")
            yield response
    finally:
        if client is None:
            http.close()


def _announced_size(response: httpx.Response) -> int | None:
    """The whole source's size as the response states it (Content-Range total, else length)."""
    whole = response.headers.get("Content-Range", "").rpartition("/")[2]
    if response.status_code == 206 and whole.isdigit():
        return int(whole)
    length = response.headers.get("Content-Length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


def read_capped(response: httpx.Response, limit: int) -> Iterator[bytes]:
    """The response body in chunks, refused as soon as the source is known to pass `limit`.

    Raises:
        SourceRefused: The response announces, or delivers, more than `limit` bytes.
    """
    announced = _announced_size(response)
    if announced is not None and announced > limit:
        raise too_large(limit)
    read = 0
    for chunk in response.iter_bytes(_CHUNK):
        read += len(chunk)
        if read > limit:
            raise too_large(limit)
        yield chunk


def presign_sources(
    images: list[str], destination: S3Destination, *, expires_in: int
) -> PresignedSources:
    """Check every source; presign `s3://` sources (after checking they exist), pass URLs
    through once their host is checked (no request is made to it here).

    Raises:
        InvalidInput: Naming the source when an object is missing or a value is neither.
        SourceRefused: (an `InvalidInput`) a source outside what the destination allows.
    """
    if isinstance(images, str):
        raise InvalidInput("images must be a list of s3:// URIs or https URLs, not one string")
    settings = get_settings()
    urls: list[str] = []
    identities: list[str] = []
    client = destination.get_client()
    for i, source in enumerate(images):
        if not isinstance(source, str):
            raise InvalidInput(f"images[{i}] must be an s3:// URI or an https URL")
        if source.startswith("s3://"):
            try:
                bucket, key = parse_s3_uri(source)
            except ValueError as exc:
                raise InvalidInput(f"images[{i}]: {exc}") from exc
            try:
                check_source_bucket(bucket, destination)
            except SourceRefused as exc:
                raise SourceRefused(f"images[{i}]: {exc.message}") from exc
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise InvalidInput(
                    f"images[{i}]: cannot read {source} ({type(exc).__name__}); "
                    "check the URI and that the destination's credentials can read it"
                ) from exc
            if int(head.get("ContentLength") or 0) > settings.source_max_bytes:
                raise SourceRefused(f"images[{i}]: {too_large(settings.source_max_bytes).message}")
            urls.append(SignedUrl(destination.presign_get(source, expires_in=expires_in)))
            identities.append(source_identity(source, head.get("ETag")))
        elif source.startswith(("https://", "http://")):
            try:
                check_source_url(source, settings)
            except SourceRefused as exc:
                raise SourceRefused(f"images[{i}]: {exc.message}") from exc
            urls.append(source)
            identities.append(source_identity(source))
        else:
            raise InvalidInput(f"images[{i}] must be an s3:// URI or an https URL")
    return PresignedSources(urls, identities)


def first_image_size(url: str) -> tuple[int, int]:
    """Width and height of the image at `url`, read from its first bytes only (a range GET,
    checked and pinned like every source read, at most 256 KiB).

    Raises:
        ValueError: The header cannot be read.
        SourceRefused: The URL breaks a source rule, redirects, or is larger than
            `SEEDREAM_SOURCE_MAX_BYTES`.
    """
    settings = get_settings()
    parser = ImageFile.Parser()
    wanted = min(_HEADER_BYTES, settings.source_max_bytes)
    try:
        with open_source(url, headers={"Range": f"bytes=0-{wanted - 1}"},
                         settings=settings) as response:
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}")
            read = 0
            for chunk in read_capped(response, settings.source_max_bytes):
                parser.feed(chunk)
                read += len(chunk)
                if parser.image is not None or read >= wanted:
                    break
    except httpx.HTTPError as exc:
        raise ValueError(type(exc).__name__) from exc
    if parser.image is None:
        raise ValueError("no image header in the first bytes")
    width, height = parser.image.size
    return int(width), int(height)


__all__ = [
    "PinnedUrl",
    "PresignedSources",
    "SignedUrl",
    "SourceRefused",
    "check_source_bucket",
    "check_source_url",
    "first_image_size",
    "open_source",
    "presign_sources",
    "read_capped",
    "too_large",
]
