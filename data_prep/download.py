"""Fetch image bytes by URL or local path, naming a reason for every failure.

Remote URLs must be http/https, and so must every redirect hop. Each attempt has connect and read
timeouts plus a wall-clock cap; transient failures (5xx, 408, 429, timeouts, dropped connections)
are retried with exponential backoff, while 4xx answers and oversize bodies are not. Bodies are
streamed and abandoned as soon as they pass ``max_bytes``. Local paths (and ``file://`` URLs at the
top level, never as a redirect target) are read only when ``allow_local`` is set.

Safe on a cloud node: every hop's host is resolved and refused when any address it resolves to is loopback,
private, link-local (e.g. the 169.254.169.254 metadata endpoint), multicast, reserved or unspecified, unless
``allow_private_addresses`` is set, so a crafted URL or redirect cannot reach the node's internal services.
The address each connection actually reached is checked again once it is open (PublicPeerAdapter), so a DNS
answer that changes between the check and the connect (rebinding) is refused too.
Opt-out signals: a response whose ``X-Robots-Tag`` says ``noai`` or ``noimageai`` (optionally scoped to a user
agent, ``bot: noai``) is skipped with reason ``robots_noai`` unless ``honor_robots_tag`` is off, as img2dataset does.

Redirects and retries are handled here rather than by requests/urllib3 because both hide what we
need: urllib3's ``Retry`` does not cover failures while streaming the body and reports an exhausted
read timeout as a plain ``ConnectionError``, and requests' own redirect loop would follow a hop to
another scheme before we could refuse it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import requests
import urllib3

REMOTE_SCHEMES = ("http", "https")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
ROBOTS_OPT_OUTS = frozenset({"noai", "noimageai"})

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DownloadConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # longest silence between two reads
    total_timeout: float | None = 120.0  # wall clock per attempt, so a trickling body cannot hang a worker
    retries: int = 3  # extra attempts after the first, for retryable failures only
    backoff: float = 0.5  # seconds before the first retry; doubled after each
    max_backoff: float = 30.0
    max_bytes: int = 50 * 2**20
    max_redirects: int = 5
    allow_local: bool = False
    allow_private_addresses: bool = False  # loopback/private/link-local/multicast hosts; tests' 127.0.0.1 server
    honor_robots_tag: bool = True  # X-Robots-Tag noai / noimageai
    chunk_size: int = 64 * 2**10
    user_agent: str = "commoncanvas-recipes-fetch/0.1"


@dataclass
class Download:
    """Outcome of one fetch: ``data`` on success, else ``reason`` (a short stable tag) and ``detail``."""

    url: str
    data: bytes | None = None
    reason: str | None = None
    detail: str = ""
    attempts: int = 1
    final_url: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


class DownloadError(Exception):
    def __init__(self, reason: str, detail: str = "", retryable: bool = False, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def robots_opt_out(values: Iterable[str]) -> str | None:
    """The opt-out directive an X-Robots-Tag header carries (`noai`, `noimageai`), or None. Directives are
    comma-separated and may be scoped to a user agent (`somebot: noai, noimageai`); any scope counts."""
    for value in values:
        for directive in value.split(","):
            token = directive.split(":")[-1].strip().lower()
            if token in ROBOTS_OPT_OUTS:
                return token
    return None


def check_public_host(url: str, resolve: Callable = socket.getaddrinfo) -> None:
    """Raise DownloadError("private_address") when the URL's host resolves to any non-public address."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise DownloadError("bad_url", f"no host in {url!r}")
    try:
        infos = resolve(host, parts.port or (443 if parts.scheme.lower() == "https" else 80), 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError("dns_error", f"{host}: {exc}", retryable=isinstance(exc, socket.gaierror)
                            and exc.errno == socket.EAI_AGAIN) from None
    for info in infos:
        address = info[4][0].split("%")[0]
        if not is_public_address(address):
            raise DownloadError("private_address", f"{host} resolves to {address}; pass --allow-private-addresses "
                                "to fetch from it")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_global and not ip.is_multicast


class _PublicPeerMixin:
    """Refuses a connection whose peer is not public, right after the socket connects and before any byte is
    sent: the address checked is the one the kernel connected to, not a second DNS answer."""

    peer_allowed: Callable[[str], bool] = staticmethod(is_public_address)

    def _new_conn(self):
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if not self.peer_allowed(peer):
            sock.close()
            raise DownloadError("private_address", f"{self.host} connected to {peer}; pass "
                                "--allow-private-addresses to fetch from it")
        return sock


class PublicPeerAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose connections (HTTP and HTTPS, not through a proxy) refuse non-public peers."""

    def __init__(self, peer_allowed: Callable[[str], bool] = is_public_address, **kwargs):
        self._peer_allowed = peer_allowed
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        allowed = staticmethod(self._peer_allowed)
        http = type("PublicHTTPConnection", (_PublicPeerMixin, urllib3.connection.HTTPConnection), {"peer_allowed": allowed})
        https = type("PublicHTTPSConnection", (_PublicPeerMixin, urllib3.connection.HTTPSConnection),
                     {"peer_allowed": allowed})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PublicHTTPPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("PublicHTTPSPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


def classify_request_exception(exc: BaseException) -> DownloadError:
    """Map a requests/urllib3 exception onto a reason tag and whether retrying may help."""
    if isinstance(exc, DownloadError):
        return exc
    # requests re-raises a read timeout hit while streaming the body as ConnectionError(ReadTimeoutError).
    wrapped = exc.args[0] if exc.args else None
    if isinstance(exc, requests.Timeout) or isinstance(wrapped, urllib3.exceptions.ReadTimeoutError):
        return DownloadError("timeout", str(exc), retryable=True)
    if isinstance(exc, requests.exceptions.SSLError):
        return DownloadError("ssl_error", str(exc))
    if isinstance(exc, requests.exceptions.InvalidSchema):
        return DownloadError("bad_scheme", str(exc))
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        urllib3.exceptions.LocationParseError, UnicodeError)):
        return DownloadError("bad_url", str(exc))
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return DownloadError("read_error", str(exc), retryable=True)
    if isinstance(exc, requests.ConnectionError):
        return DownloadError("connection_error", str(exc), retryable=True)
    if isinstance(exc, requests.RequestException):
        return DownloadError("request_error", str(exc))
    if isinstance(exc, ValueError):  # urllib.parse rejects some malformed URLs itself
        return DownloadError("bad_url", str(exc))
    raise exc


class Downloader:
    """Thread-safe fetcher; each thread gets its own ``requests.Session`` (sessions are not thread-safe)."""

    def __init__(self, config: DownloadConfig | None = None, sleep: Callable[[float], None] = time.sleep,
                 resolve: Callable = socket.getaddrinfo, peer_allowed: Callable[[str], bool] = is_public_address):
        self.config = config or DownloadConfig()
        self._sleep = sleep
        self._resolve = resolve  # socket.getaddrinfo's signature; tests substitute a fixed answer
        self._peer_allowed = peer_allowed  # the connect-time check; tests substitute one
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = self.config.user_agent
            if not self.config.allow_private_addresses:
                for prefix in ("http://", "https://"):
                    session.mount(prefix, PublicPeerAdapter(self._peer_allowed))
            self._local.session = session
        return session

    def fetch(self, url: str) -> Download:
        """Fetch ``url`` with retries; never raises for network or input problems."""
        cfg = self.config
        for attempt in range(1, cfg.retries + 2):
            try:
                data, final_url = self._fetch_once(url)
                return Download(url=url, data=data, attempts=attempt, final_url=final_url)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a counted reason
                err = classify_request_exception(exc)
            if not err.retryable or attempt > cfg.retries:
                return Download(url=url, reason=err.reason, detail=err.detail, attempts=attempt)
            self._sleep(self._backoff_delay(attempt, err.retry_after))
        raise AssertionError("unreachable")

    def _backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.config
        delay = cfg.backoff * 2 ** (attempt - 1)
        delay *= 0.5 + random.random() / 2  # jitter, so workers hitting one host do not retry in lockstep
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, cfg.max_backoff)

    def _fetch_once(self, url: str) -> tuple[bytes, str]:
        scheme = urlsplit(url).scheme.lower()
        if scheme in REMOTE_SCHEMES:
            return self._fetch_http(url)
        if scheme in ("", "file"):
            if not self.config.allow_local:
                raise DownloadError("bad_scheme", f"local path {url!r} given but local reads are off")
            return self._read_local(url), url
        raise DownloadError("bad_scheme", f"scheme {scheme!r} is not http/https")

    def _read_local(self, url: str) -> bytes:
        parts = urlsplit(url)
        path = url2pathname(parts.path) if parts.scheme == "file" else url
        try:
            size = os.path.getsize(path)
            if size > self.config.max_bytes:
                raise DownloadError("too_large", f"{size} bytes > {self.config.max_bytes}")
            with open(path, "rb") as f:
                return f.read(self.config.max_bytes + 1)
        except FileNotFoundError as exc:
            raise DownloadError("file_missing", str(exc)) from exc
        except IsADirectoryError as exc:
            raise DownloadError("file_missing", str(exc)) from exc
        except OSError as exc:
            raise DownloadError("read_error", str(exc)) from exc

    def _fetch_http(self, url: str) -> tuple[bytes, str]:
        cfg = self.config
        session = self.session
        started = time.monotonic()
        for _hop in range(cfg.max_redirects + 1):
            if urlsplit(url).scheme.lower() not in REMOTE_SCHEMES:
                raise DownloadError("bad_scheme", f"redirected to {url!r}")
            if not cfg.allow_private_addresses:
                check_public_host(url, self._resolve)  # on every hop: a public page may redirect inwards
            resp = session.get(url, stream=True, allow_redirects=False,
                               timeout=(cfg.connect_timeout, cfg.read_timeout))
            with resp:
                target = session.get_redirect_target(resp)
                if target is not None:
                    url = urljoin(resp.url, target)
                    continue
                if not 200 <= resp.status_code < 300:
                    raise DownloadError(
                        f"http_{resp.status_code}", resp.reason or "",
                        retryable=resp.status_code in RETRYABLE_STATUS,
                        retry_after=_retry_after_seconds(resp.headers.get("Retry-After")),
                    )
                opt_out = robots_opt_out(resp.raw.headers.getlist("X-Robots-Tag")) if cfg.honor_robots_tag else None
                if opt_out:
                    raise DownloadError("robots_noai", f"X-Robots-Tag: {opt_out}")
                return self._read_body(resp, started), resp.url
        raise DownloadError("too_many_redirects", f"more than {cfg.max_redirects} hops")

    def _read_body(self, resp: requests.Response, started: float) -> bytes:
        cfg = self.config
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_bytes:
            raise DownloadError("too_large", f"Content-Length {declared} > {cfg.max_bytes}")
        chunks, total = [], 0
        for chunk in resp.iter_content(chunk_size=cfg.chunk_size):
            total += len(chunk)
            if total > cfg.max_bytes:  # also catches a missing or lying Content-Length
                raise DownloadError("too_large", f"body passed {cfg.max_bytes} bytes")
            if cfg.total_timeout is not None and time.monotonic() - started > cfg.total_timeout:
                raise DownloadError("timeout", f"body not done after {cfg.total_timeout}s", retryable=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def fetch_many(self, urls: Iterable[str], workers: int = 8) -> Iterator[Download]:
        """Fetch in a thread pool; results come back in completion order."""
        return map_unordered(self.fetch, urls, workers)


def map_unordered(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None) -> Iterator[R]:
    """``fn`` over ``items`` in ``workers`` threads, yielding results as they finish.

    Unlike ``Executor.map`` it keeps at most ``in_flight`` items submitted (default 4 per worker), so a
    long input is consumed lazily and finished results are not held back behind a slow one. Exceptions
    raised by ``fn`` propagate to the caller.
    """
    workers = max(1, workers)
    in_flight = in_flight or 4 * workers
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        pending: set[Future] = set()
        exhausted = False
        while True:
            while not exhausted and len(pending) < in_flight:
                try:
                    pending.add(pool.submit(fn, next(source)))
                except StopIteration:
                    exhausted = True
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
