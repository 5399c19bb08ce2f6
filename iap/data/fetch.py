"""img2dataset's image fetch, bounded for the open web: a whole-request deadline, a byte cap, and a
pixel cap read from the image header before anything decodes it.

img2dataset reads with a per-read socket timeout (a server trickling a byte at a time holds a thread
for as long as it likes) and checks `max_image_area` only after decoding the full image (a 388 KB
PNG of 20000x20000 pixels takes GBs). `fetch` replaces `img2dataset.downloader.download_image` with
the same contract. The replacement must also happen in img2dataset's spawned worker processes: the
downloader object img2dataset pickles to them is a `LimitedDownloader`, so unpickling it imports
this module (which installs `fetch`) and carries the limits.
"""

from __future__ import annotations

import http.client
import importlib
import io
import ipaddress
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from img2dataset import downloader as img2dataset_downloader
from PIL import Image

img2dataset_main = importlib.import_module("img2dataset.main")  # the module (the package exports a function `main`)

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchLimits:
    timeout: float  # seconds for the whole request (connect, headers, body)
    max_bytes: int
    max_pixels: int
    public_only: bool = False  # refuse private, loopback, link-local (cloud metadata) and reserved peers


_configured: FetchLimits | None = None  # set in the parent around an img2dataset call
_active: FetchLimits | None = None  # what this process's fetches use (set per shard in a worker)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// too; a manifest's server must not steer the worker off http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL refused: {newurl[:60]}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _refuse_private_peer(sock, host: str) -> None:
    """Checked on the connected socket, before a byte of the request is sent: a DNS answer that changes
    between a check and the connect (rebinding) cannot slip past."""
    address = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        sock.close()
        raise ConnectionRefusedError(f"private address refused: {host} is {address} "
                                     "(download.refuse_private_addresses)")


class _PublicHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_private_peer(self.sock, self.host)


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:  # TCP first, checked, then TLS over the same socket
        http.client.HTTPConnection.connect(self)
        _refuse_private_peer(self.sock, self.host)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)
_PUBLIC_OPENER = urllib.request.build_opener(_HttpOnlyRedirects, _PublicHTTPHandler, _PublicHTTPSHandler)


def fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """(key, image bytes or None, error or None) for one (key, url) row, within the limits."""
    key, url = row
    limits = _active or FetchLimits(timeout, 1 << 62, 1 << 62)
    agent = USER_AGENT + (f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
                          if user_agent_token else "")
    try:
        deadline = time.monotonic() + limits.timeout
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        opener = _PUBLIC_OPENER if limits.public_only else _OPENER
        with opener.open(request, timeout=limits.timeout) as r:
            if disallowed_header_directives and img2dataset_downloader.is_disallowed(
                    r.headers, user_agent_token, disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            body = _read(r, deadline, limits)
        too_big = _too_many_pixels(body, limits.max_pixels)
        return (key, None, too_big) if too_big else (key, body, None)
    except Exception as err:  # noqa: BLE001 - like img2dataset: every failure is the row's error message
        return key, None, str(err)


def _read(response, deadline: float, limits: FetchLimits) -> io.BytesIO:
    """The body, one socket read at a time (read1), so the deadline is checked as bytes trickle in."""
    body = io.BytesIO()
    while chunk := response.read1(CHUNK):
        body.write(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out: the whole request took over {limits.timeout:g} s")
        if body.tell() > limits.max_bytes:
            raise ValueError(f"image file too large: over max_bytes {limits.max_bytes}")
    body.seek(0)
    return body


def _too_many_pixels(body: io.BytesIO, max_pixels: int) -> str | None:
    """The error for an image whose header declares more than max_pixels (nothing is decoded)."""
    try:
        with Image.open(body) as img:  # reads the header only
            width, height = img.size
    except Image.DecompressionBombError as e:  # Pillow's own guard (2x its MAX_IMAGE_PIXELS) fired first
        return f"image area too large: {e} (not decoded)"
    except Exception:  # noqa: BLE001 - not an image Pillow knows: img2dataset's decoder decides
        width = height = 0
    finally:
        body.seek(0)
    if width * height > max_pixels:
        return f"image area too large: {width}x{height} pixels, over max_pixels {max_pixels} (not decoded)"
    return None


class LimitedDownloader(img2dataset_downloader.Downloader):
    """img2dataset's Downloader, carrying the limits into the worker that runs each shard."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _configured

    def __call__(self, row):
        global _active
        _active = self.limits
        return super().__call__(row)


@contextmanager
def limited(limits: FetchLimits) -> Iterator[None]:
    """img2dataset calls inside this block fetch with `fetch` under `limits`, in every process."""
    global _configured
    _configured, original = limits, img2dataset_main.Downloader
    img2dataset_main.Downloader = LimitedDownloader
    try:
        yield
    finally:
        img2dataset_main.Downloader, _configured = original, None


img2dataset_downloader.download_image = fetch
