"""One TLS context per process for every httpx client the plugin builds.

Building one loads the CA bundle: about 30-70 ms of CPU. A client per item, or per event loop
(each async flow run has its own), would pay it again each time, and on an event loop that is
time no other coroutine runs (BENCHMARKS.md figure (b)).
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx


@functools.cache
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


def tls_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), built once
    per CA setting and shared (an `SSLContext` is safe to share between clients and threads)."""
    return _context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


__all__ = ["tls_context"]
