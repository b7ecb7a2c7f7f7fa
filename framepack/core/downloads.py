"""Downloading a URL input (a LoRA) safely: https at every hop, public hosts only, bounded in size and time.

The rules, each against a way a hostile or broken host could hurt the service:
- **https only, at every hop.** Redirects are followed by hand (at most 5), and each new URL is checked again.
- **Public addresses only.** The host name is resolved once; every address must be public (not loopback,
  private, link-local, which includes cloud metadata at 169.254.169.254, multicast, reserved or unspecified),
  and the connection goes to the address that was checked, so a second DNS answer cannot redirect it. Private
  networks can be allowed (`FRAMEPACK_ALLOW_PRIVATE_URLS=1`). Every failure to connect, resolve, shake hands or
  read gets the same message, so the errors cannot tell a closed port from an open one.
- **Bounded.** At most `max_bytes`; the whole download within `DEADLINE_S`; and no `RATE_WINDOW_S` window with
  less than `MIN_BYTES_PER_S` per second on average, so a stalled or trickling host is dropped within seconds.
- **Cancellable.** The transfer runs on a worker thread while the caller's thread waits in short slices, so a
  cancellation (Cog raises it in the predicting thread) takes effect within about a quarter of a second; the
  socket is then shut down and the partial file removed.

URLs are written to logs, metadata and errors only as `public_url` gives them: without credentials, query or
fragment, where tokens live. `cached_download` keeps a downloaded file only once it is valid, and bounds the
cache's total size, least recently used out first.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urljoin, urlsplit

from ..errors import InvalidInput

if TYPE_CHECKING:  # config imports the request, which imports public_url from here
    from ..config import LoraDownloads

logger = logging.getLogger(__name__)

DEADLINE_S = 600.0
MIN_BYTES_PER_S = 64 * 1024
RATE_WINDOW_S = 10.0
MAX_REDIRECTS = 5
_POLL_S = 0.25
_CHUNK = 1 << 20
_UNREACHABLE = "no https answer from the host"
T = TypeVar("T")


def public_url(url: str) -> str:
    """`url` without user name, password, query or fragment: what may be logged, stored or shown."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def refused_address(address: str) -> str | None:
    """Why a URL input may not connect to `address` (an IP), or None for a globally routable unicast address.

    IPv6 addresses that carry an IPv4 one (mapped, 6to4, Teredo) are judged by the IPv4 address they carry.
    Anything not global is refused, which also covers the shared address space 100.64.0.0/10 where some
    clouds serve instance metadata.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        ip = carried or ip
    for kind, applies in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("non-public", not ip.is_global),
    ):
        if applies:
            return f"a {kind} address"
    return None


@dataclass
class _Transfer:
    """What the worker thread shares with the waiting thread."""

    received: int = 0
    error: InvalidInput | None = None
    done: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    sockets: list[socket.socket] = field(default_factory=list)

    def abort(self) -> None:
        """Stop the worker: wake a blocked read by shutting its socket down."""
        self.stop.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def download(
    url: str,
    name: str,
    target: Path,
    max_bytes: int,
    allow_private: bool = False,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Download `url` into the new file `target`, or raise InvalidInput naming input `name`.

    `headers` (a token's Authorization) go only to `url`'s own host, never to a host a redirect leads to.
    Nothing is left at `target` unless the download completed: not on an error, a broken rule or a
    cancellation (any exception raised in this thread while it waits, such as Cog's).
    """
    shown = public_url(url)
    transfer = _Transfer()
    worker = threading.Thread(
        target=_run,
        args=(url, name, target, max_bytes, allow_private, transfer, dict(headers or {})),
        name="framepack-download",
    )
    started = time.monotonic()
    window_start, window_bytes = started, 0
    logger.info("downloading %s for %s", shown, name)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
            now = time.monotonic()
            if worker.is_alive() and now - started > DEADLINE_S:
                raise InvalidInput(name, f"{shown} did not finish downloading within {DEADLINE_S:.0f} s")
            if now - window_start >= RATE_WINDOW_S:
                if worker.is_alive() and transfer.received - window_bytes < MIN_BYTES_PER_S * RATE_WINDOW_S:
                    raise InvalidInput(
                        name,
                        f"{shown} sent less than {MIN_BYTES_PER_S // 1024} KiB/s over {RATE_WINDOW_S:.0f} s "
                        "(stalled or too slow)",
                    )
                window_start, window_bytes = now, transfer.received
        if transfer.error is not None:
            raise transfer.error
        if not transfer.done:
            raise InvalidInput(name, f"could not download {shown}: {_UNREACHABLE}")
    except BaseException:
        transfer.abort()
        worker.join(1.0)
        target.unlink(missing_ok=True)
        raise


def _run(
    url: str, name: str, target: Path, max_bytes: int, allow_private: bool, transfer: _Transfer, headers: dict
) -> None:
    """The worker: follow redirects, then stream the body into `target`; errors go to `transfer.error`."""
    shown, origin = public_url(url), urlsplit(url).netloc.lower()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            own_host = urlsplit(url).netloc.lower() == origin
            response = _get(url, name, shown, allow_private, transfer, headers if own_host else {})
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                response.close()
                continue
            if response.status != 200:
                raise InvalidInput(name, f"could not download {shown}: the server answered HTTP {response.status}")
            _save_body(response, name, shown, target, max_bytes, transfer)
            transfer.done = True
            return
        raise InvalidInput(name, f"could not download {shown}: more than {MAX_REDIRECTS} redirects")
    except InvalidInput as error:
        transfer.error = error
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
        if not transfer.stop.is_set():
            transfer.error = InvalidInput(name, f"could not download {shown}: {_UNREACHABLE}")
    finally:
        if not transfer.done:
            target.unlink(missing_ok=True)


def _get(
    url: str, name: str, shown: str, allow_private: bool, transfer: _Transfer, headers: dict
) -> http.client.HTTPResponse:
    """One GET of `url` over TLS to a checked address of its host; returns the response with its headers read."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidInput(name, f"{shown} led to {public_url(url)}: only https URLs are accepted")
    port = parts.port or 443
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidInput(name, f"could not download {shown}: {_UNREACHABLE}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))  # the resolver's order of preference
    if not allow_private:
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                raise InvalidInput(
                    name,
                    f"{public_url(url)} resolves to {reason}; URL inputs must be public hosts "
                    "(FRAMEPACK_ALLOW_PRIVATE_URLS=1 allows private networks)",
                )
    raw = _connect(addresses, port)
    transfer.sockets.append(raw)
    if transfer.stop.is_set():
        raise OSError("cancelled")
    tls = ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname)
    transfer.sockets.append(tls)
    connection = http.client.HTTPSConnection(parts.hostname, port)
    connection.sock = tls  # already connected to the checked address: no second DNS lookup
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    connection.request("GET", target, headers={"User-Agent": "framepack", **headers})
    return connection.getresponse()


def _connect(addresses: list[str], port: int) -> socket.socket:
    """A connection to the first of the checked `addresses` that answers (an IPv6 one may be unreachable here).

    The timeout is longer than the rate window: a silent host is dropped by the waiting thread's rate check.
    """
    for address in addresses[:-1]:
        try:
            return socket.create_connection((address, port), timeout=3 * RATE_WINDOW_S)
        except OSError:
            continue
    return socket.create_connection((addresses[-1], port), timeout=3 * RATE_WINDOW_S)


def _save_body(response, name: str, shown: str, target: Path, max_bytes: int, transfer: _Transfer) -> None:
    declared = int(response.getheader("Content-Length") or 0)
    if declared > max_bytes:
        raise InvalidInput(name, f"{shown} is {declared} bytes, more than the {max_bytes} allowed")
    with open(target, "xb") as out:
        while not transfer.stop.is_set():
            chunk = response.read1(_CHUNK)
            if not chunk:
                return
            transfer.received += len(chunk)
            if transfer.received > max_bytes:
                raise InvalidInput(name, f"{shown} is larger than the {max_bytes} bytes allowed")
            out.write(chunk)
    raise OSError("cancelled")


def cached_download(
    url: str,
    name: str,
    settings: LoraDownloads,
    validate: Callable[[Path, str], T],
    headers: Mapping[str, str] | None = None,
) -> T:
    """`validate(path, shown)` of the file at `url`: from the cache, or downloaded into it.

    A download is kept only once `validate` accepted it (a LoRA whose keys match the model), under a name made
    from the URL's hash; `shown` is the URL as errors may show it. After each addition the least recently used
    files go until the cache holds at most `settings.cache_max_bytes`.
    """
    shown = public_url(url)
    target = cache_path(url, settings)
    if target.is_file():
        os.utime(target)  # recently used
        return validate(target, shown)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    partial = settings.cache_dir / f".{target.stem}.{secrets.token_hex(4)}.partial"
    try:
        download(url, name, partial, settings.max_bytes, settings.allow_private, headers)
        result = validate(partial, shown)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    evict_least_recently_used(settings.cache_dir, settings.cache_max_bytes, keep=target)
    return result


def cache_path(url: str, settings: LoraDownloads) -> Path:
    """Where the file at `url` is cached (a name made from the URL's hash)."""
    return settings.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".safetensors")


def evict_least_recently_used(folder: Path, max_total: int, keep: Path) -> list[Path]:
    """Remove the least recently used cached files of `folder` (not `keep`) until at most `max_total` bytes remain."""
    files = sorted(folder.glob("*.safetensors"), key=lambda path: path.stat().st_mtime)
    total = sum(path.stat().st_size for path in files)
    removed = []
    for path in files:
        if total <= max_total:
            break
        if path != keep:
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
