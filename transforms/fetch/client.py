"""Fetching image bytes over HTTP(S), safely and concurrently, as a Beam stage.

`Fetcher` owns one asyncio loop in a background thread and two aiohttp sessions (one keeps a
connection open for a request to the same host already waiting, one closes it after the answer):
a bounded pool of concurrent requests per worker process, so its CPU stays busy decoding and hashing while the
network waits. `FetchImages` feeds it from a DoFn and emits rows as their fetches complete.

Public transforms (rows are `schema.Row` dicts):

- `FetchImages(config)`: rows -> the same rows with `status`, HTTP facts and the body as `_body`;
  rows that already carry a status pass through.
- `FetchDoFn(config)`: the DoFn under it (a `transforms.bounded_futures.BoundedFuturesDoFn`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import email.utils
import errno
import ipaddress
import math
import socket
import threading
import time
import typing
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

import aiohttp
import apache_beam as beam
import yarl
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from transforms import schema
from transforms.bounded_futures import BoundedFuturesDoFn
from transforms.errors import BadInput
from transforms.fetch.address_policy import AddressPolicy, BlockedAddressError, GuardedResolver, legacy_ipv4
from transforms.fetch.open_files import ShortagePatience, is_local_shortage, raise_open_files_limit
from transforms.image_checks import DEFAULT_MAX_PIXELS

__all__ = [
    "REDIRECT_STATUSES",
    "RETRY_STATUSES",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "OPT_OUT_DIRECTIVES",
    "DEFAULT_USER_AGENT",
    "user_agent",
    "FetchConfig",
    "FetchResult",
    "parse_retry_after",
    "robots_opt_out",
    "HostGate",
    "Pacer",
    "Fetcher",
    "apply_result",
    "FetchDoFn",
    "FetchImages",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRIES = 10  # --retries: the backoff doubles each attempt, 10 retries wait 8.5 min in all
# The longest waits that can be meant, in seconds (a larger value is milliseconds taken for seconds).
MAX_SECONDS = {"timeout": 3600, "max_retry_after": 3600, "host_cooldown": 86400}
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
DEFAULT_USER_AGENT = "beam-image-datasets/0.1 (image dataset research crawler)"
# Seconds an idle kept-alive connection may wait for its next request (aiohttp's default is 15):
# one is only kept for a request already waiting (HostGate.keep_alive), which takes it within
# milliseconds unless paced; a longer wait is not worth a socket held open on the server.
IDLE_KEEPALIVE_S = 2.0


def user_agent(contact: str | None = None, base: str = DEFAULT_USER_AGENT) -> str:
    """An honest User-Agent: what we are, and how a site owner reaches whoever runs the crawl."""
    if not contact:
        return base
    return base[:-1] + f"; contact: {contact})" if base.endswith(")") else f"{base} (contact: {contact})"


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """What a fetch may do and how politely: one per job, built from the network options."""

    timeout: float = 20.0  # seconds for one attempt: connect, redirects, headers, body
    max_bytes: int = 32 * 1024 * 1024  # body cap after Content-Encoding decoding
    max_redirects: int = 5
    retries: int = 2  # extra attempts for 429 and 5xx
    backoff: float = 0.5  # first retry delay; doubles each attempt
    max_retry_after: float = 10.0  # a longer Retry-After is not waited for: the row fails
    concurrency: int = 64  # requests in flight per worker process (its DoFn instances share one Fetcher)
    per_host: int = 8  # requests in flight per host
    max_rate: float = 0.0  # requests started per second per worker process; 0 = unlimited
    host_failure_limit: int = 10  # consecutive failures to connect before a host is skipped
    host_cooldown: float = 60.0  # seconds a failing host is skipped before one probe is let through
    max_host_interval: float = 30.0  # slowest pace the adaptive per-host rate falls to
    user_agent: str = DEFAULT_USER_AGENT
    allow_networks: tuple = ()
    honor_robots: bool = True

    @staticmethod
    def add_arguments(parser: argparse._ActionsContainer) -> None:
        """Adds the network options (a "network" group) to a job's parser: one definition, so every
        job that goes on the web (ingest, refresh) keeps the same politeness, address policy and
        deadlines. A flag already there is skipped (Beam parses every job's options into one parser).

        Args:
            parser: an argparse parser (Beam's or the job's --help parser).
        """
        group = parser.add_argument_group("network", "what is fetched, how fast and how politely")

        def add(*flags, **kwargs):
            try:
                group.add_argument(*flags, **kwargs)
            except argparse.ArgumentError:  # defined by another job's options in this process
                pass

        add(
            "--allow-network",
            action="append",
            default=[],
            metavar="CIDR",
            help="also allow fetching from this network (repeatable); by default only public addresses are fetched",
        )
        add(
            "--timeout",
            type=float,
            default=20.0,
            help="whole-request deadline in seconds, redirects and body included (default 20)",
        )
        add("--max-bytes", type=int, default=32 * 1024 * 1024, help="body size cap in bytes (default 32 MiB)")
        add(
            "--max-pixels",
            type=int,
            default=DEFAULT_MAX_PIXELS,
            help=f"larger images are refused as decompression bombs (default {DEFAULT_MAX_PIXELS})",
        )
        add("--max-redirects", type=int, default=5, help="default 5")
        add(
            "--retries",
            type=int,
            default=2,
            help=f"extra attempts after 429 or 5xx, 0-{MAX_RETRIES}, the wait doubling from 0.5 s (default 2)",
        )
        add(
            "--max-retry-after",
            type=float,
            default=10.0,
            help="longest Retry-After honoured in seconds; longer makes the row fail (default 10)",
        )
        add("--concurrency", type=int, default=64, help="requests in flight per worker process (default 64)")
        add("--per-host", type=int, default=8, help="requests in flight per host per worker process (default 8)")
        add(
            "--max-rate",
            type=float,
            default=0.0,
            help="requests started per second per worker process (default 0: no limit)",
        )
        add(
            "--host-failure-limit",
            type=int,
            default=10,
            help="consecutive failures to connect (refused, DNS, connect timeout) before a host's URLs are"
            " skipped (default 10)",
        )
        add(
            "--host-cooldown",
            type=float,
            default=60.0,
            help="seconds a failing host is skipped before it is tried again (default 60)",
        )
        add("--user-agent", default=DEFAULT_USER_AGENT, help=f"default {DEFAULT_USER_AGENT!r}")
        add("--contact", help="e-mail or URL added to the User-Agent so site owners can reach you")
        add("--ignore-robots", action="store_true", help="do not honour X-Robots-Tag noai/noimageai (not recommended)")

    @classmethod
    def from_options(cls, opts: typing.Any) -> FetchConfig:
        """The FetchConfig the options of add_arguments describe.

        Args:
            opts: parsed options (a PipelineOptions view or an argparse Namespace).
        Returns:
            The config; raises transforms.errors.BadInput for a value out of range.
        """
        for name in (
            "timeout",
            "max_bytes",
            "max_redirects",
            "retries",
            "max_retry_after",
            "concurrency",
            "per_host",
            "max_rate",
            "host_failure_limit",
            "host_cooldown",
            "max_pixels",
        ):
            value = getattr(opts, name)
            positive = name in ("timeout", "max_bytes", "concurrency", "per_host", "max_pixels")
            flag = "--" + name.replace("_", "-")
            # why: nan passes every comparison (--timeout nan timed out every row, exit 0), inf is no
            # deadline at all (one silent server holds the run forever)
            if isinstance(value, float) and not math.isfinite(value):
                raise BadInput(f"{flag} must be a finite number, got {value}")
            if value is None or value < 0 or (positive and value == 0):
                raise BadInput(f"{flag} must be {'above' if positive else 'at least'} 0, got {value}")
        for name, most in MAX_SECONDS.items():
            if getattr(opts, name) > most:
                # why: seconds, not milliseconds (--timeout 30000 held a silent server's URL 8 hours)
                raise BadInput(f"--{name.replace('_', '-')} must be at most {most} seconds, got {getattr(opts, name)}")
        if opts.retries > MAX_RETRIES:
            # why: the backoff doubles from 0.5 s, so --retries 100 waited ~2^99 s on a URL answering 503
            raise BadInput(
                f"--retries must be at most {MAX_RETRIES}, got {opts.retries}: the wait doubles from"
                f" {cls.backoff:g} s each retry ({MAX_RETRIES} retries already wait"
                f" {cls.backoff * (2**MAX_RETRIES - 1) / 60:.1f} min for one URL)"
            )
        for network in opts.allow_network:
            # why here: AddressPolicy parses them in each worker's Fetcher, where a typo failed the
            # running job as an "unexpected ValueError" (exit 1) after its output was created
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise BadInput(
                    f"--allow-network takes a network (10.0.0.0/8, 127.0.0.1/32, fd00::/8), got {network!r}"
                ) from None
        return cls(
            timeout=opts.timeout,
            max_bytes=opts.max_bytes,
            max_redirects=opts.max_redirects,
            retries=opts.retries,
            max_retry_after=opts.max_retry_after,
            concurrency=opts.concurrency,
            per_host=opts.per_host,
            max_rate=opts.max_rate,
            host_failure_limit=opts.host_failure_limit,
            host_cooldown=opts.host_cooldown,
            user_agent=user_agent(opts.contact, opts.user_agent),
            allow_networks=tuple(opts.allow_network),
            honor_robots=not opts.ignore_robots,
        )


@dataclasses.dataclass
class FetchResult:
    """The outcome of one URL (or file) fetch: a row status, HTTP facts and the body."""

    status: str
    error: str | None = None
    http_status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None
    attempts: int = 0
    elapsed_ms: int = 0
    retry_after: float | None = None  # only meaningful while deciding on a retry
    skipped: bool = False  # failed without a request: the host is short-circuited
    unconnectable: bool = False  # no connection could be made at all (for the host's breaker)
    name_not_found: bool = False  # DNS says the host name does not exist (not a temporary failure)
    refused: bool = False  # the host actively refused the TCP connection (ECONNREFUSED)
    local_shortage: bool = False  # this machine had no descriptor to give (open_files.py): not the URL's

    def retryable(self):
        return self.status == schema.HTTP_ERROR and self.http_status in RETRY_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def robots_opt_out(header_values: Iterable[str], agent_token: str) -> str | None:
    """The X-Robots-Tag directive that opts this image out of AI datasets, or None.

    A value may be scoped to one crawler ("otherbot: noai"); such values bind only that crawler.
    """
    for value in header_values:
        scope, sep, rest = value.partition(":")
        directives = value
        if sep and scope.strip().lower() not in OPT_OUT_DIRECTIVES and " " not in scope.strip():
            if scope.strip().lower() not in (agent_token, "*"):
                continue
            directives = rest
        for directive in directives.split(","):
            directive = directive.strip().lower()
            if directive in OPT_OUT_DIRECTIVES:
                return directive
    return None


class HostGate:
    """Politeness toward one host (host:port), kept on the fetcher's event loop (no locks needed).

    - at most `per_host` requests in flight;
    - an adaptive gap between request starts: doubled (or set to Retry-After) on 429/503, shrunk by a
      quarter on each success, so a host that pushes back is slowed down and recovers later;
    - a circuit breaker: after `limit` consecutive attempts that could not connect at all (refused,
      reset before answering, connect timeout) the host's remaining URLs fail at once for
      `cooldown` seconds (doubling while it keeps failing), instead of each burning a whole
      deadline; then requests go through again, and one more failure closes it for twice as
      long. A host that accepts connections is never short-circuited, however slow some of its
      answers: a slow URL costs only itself;
    - keep-alive only for a request already waiting (see `keep_alive`), so that idle sockets stay
      few however many hosts a run touches.
    """

    def __init__(self, config: FetchConfig) -> None:
        self._config = config
        self.slots = asyncio.Semaphore(config.per_host)
        self.waiting = 0  # requests to this host waiting for one of its slots
        self.kept = 0  # requests in flight on the keep-alive session
        self.idle = 0  # connections those left open, not taken again yet (as far as we can tell)
        self._idle_at = 0.0  # loop time the last one was left open
        self._pacer = Pacer()
        self.failures = 0
        self._open_until = 0.0
        self._cooldown = config.host_cooldown
        self.last_failure: tuple[str, str | None] = ("", None)  # (status, error), set by the first failure

    def short_circuit(self, now: float) -> FetchResult | None:
        """The failure to report without trying, or None to go ahead."""
        if self.failures >= self._config.host_failure_limit and now < self._open_until:
            status, error = self.last_failure
            return FetchResult(
                status, f"host skipped after {self.failures} consecutive failures (last: {error})", skipped=True
            )
        return None

    @property
    def interval(self):
        """Seconds between request starts to this host, as the host's answers set it."""
        return self._pacer.gap

    @interval.setter
    def interval(self, seconds):
        self._pacer.gap = seconds

    async def wait_turn(self):
        await self._pacer.wait()

    @contextlib.asynccontextmanager
    async def turn(self, fetcher_slots: asyncio.Semaphore) -> AsyncIterator[None]:
        """Holds one of this host's slots, then one of the fetcher's. The request counts in
        `waiting` while it waits for the host's slot: it then starts only once a request to this
        host ends, so a connection kept open for it (keep_alive) is free by then.

        # why this order: a request waiting for the fetcher's slot may start while the host's
        # requests are all in flight, open a new connection, and leave the one kept for it idle.

        Args:
            fetcher_slots: the Fetcher's semaphore of --concurrency requests in flight.
        """
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            async with fetcher_slots:
                yield
        finally:
            self.slots.release()

    def keep_alive(self, now: float) -> bool:
        """Whether the request starting now goes on the keep-alive session: to take a connection an
        earlier request left open, or to leave its own open for a request already waiting (one
        each). Else it goes on the session that closes its connection after the answer.

        # why: aiohttp's pool keeps every finished connection for its keepalive_timeout, outside the
        # connector's `limit` (in-use only): 320 URLs on 40 hosts held 320 sockets at --concurrency
        # 64. Now a connection is left open only for a request to its host that is waiting for the
        # host's slot, which it gets as that connection's request ends.

        Args:
            now: the loop's time.
        Returns:
            True for the keep-alive session; the request counts in `kept` until `attempt_ended`.
        """
        if now - self._idle_at > IDLE_KEEPALIVE_S:
            self.idle = 0  # the pool has closed them by now
        reuse = self.idle > 0
        self.idle -= reuse
        keep = reuse or self.waiting > self.kept + self.idle
        self.kept += keep
        return keep

    def attempt_ended(self, kept: bool, result: FetchResult | None, now: float) -> None:
        """Counts the connection a keep-alive request left open (an answer came: it was not broken).

        Args:
            kept: what keep_alive said for this request.
            result: its outcome (None if it was cancelled).
            now: the loop's time.
        """
        if not kept:
            return
        self.kept -= 1
        if result is not None and result.http_status is not None and result.status != schema.TIMEOUT:
            self.idle += 1
            self._idle_at = now

    def record(self, result: FetchResult, now: float) -> None:
        """Adjusts the host's pace and circuit breaker to one attempt's outcome."""
        config = self._config
        if result.unconnectable:
            self.failures += 1
            self.last_failure = (result.status, result.error)
            if self.failures >= config.host_failure_limit:
                self._open_until = now + self._cooldown
                self._cooldown = min(self._cooldown * 2, 3600.0)
            return
        self.failures = 0
        self._cooldown = config.host_cooldown
        if result.http_status in (429, 503):
            slower = max(self.interval * 2, 0.25, result.retry_after or 0.0)
            self.interval = min(slower, config.max_host_interval)
        elif self.interval:
            self.interval = self.interval * 0.75 if self.interval > 0.01 else 0.0


class Pacer:
    """Evenly spaced starts: each wait() returns at least `gap` seconds after the previous one's."""

    def __init__(self, gap: float = 0.0) -> None:
        self.gap = gap
        self._next = 0.0

    @classmethod
    def per_second(cls, rate: float | None) -> Pacer:
        """At most `rate` starts per second (0 or None: no limit)."""
        return cls(1.0 / rate if rate and rate > 0 else 0.0)

    async def wait(self):
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + self.gap
        if start > now:
            await asyncio.sleep(start - now)


class Fetcher:
    """A pool of concurrent HTTP fetches on a private event loop thread.

    `submit` is thread-safe and returns a concurrent.futures.Future of FetchResult.
    """

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        raise_open_files_limit()  # why: --concurrency sockets per worker process; see open_files.py
        self._policy = AddressPolicy(config.allow_networks)
        self._agent_token = config.user_agent.split("/", 1)[0].strip().lower()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fetcher", daemon=True)
        self._thread.start()
        self._keep_alive_session, self._closing_session = self._run(self._open_sessions())
        self._file_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        # Shared per process (see FetchDoFn): closed when the last DoFn lets go of it.
        sessions = (self._keep_alive_session, self._closing_session)
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, sessions, self._file_pool)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open_sessions(self):
        """(the session that keeps connections open, the one that closes each after its answer).

        # why two: a request no other one waits for (HostGate.keep_alive) goes through a force_close
        # connector, which closes the connection on our side whatever the server answers; a
        # "Connection: close" request header alone left it pooled when the server closed without
        # saying so, and the next request on it failed with "Server disconnected".
        """
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._hosts = {}
        self._rate = Pacer.per_second(self.config.max_rate)
        return self._open_session(force_close=False), self._open_session(force_close=True)

    def _open_session(self, force_close):
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy),
            # in use only (the idle ones are bounded by HostGate.keep_alive); with both sessions
            # together, self._slots holds the requests in flight to --concurrency
            limit=self.config.concurrency,
            force_close=force_close,
            keepalive_timeout=None if force_close else IDLE_KEEPALIVE_S,
            ttl_dns_cache=300,
        )
        # trust_env=False: a proxy from the environment would bypass the address policy.
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            headers={"User-Agent": self.config.user_agent, "Accept": "image/*,*/*;q=0.8"},
            # A connect deadline inside the whole-request one tells "host unreachable" (which feeds
            # the host's breaker) apart from "slow answer" (which costs only its own URL).
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(self.config.timeout * 0.8, 10.0)),
            auto_decompress=True,
        )

    def submit(self, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> concurrent.futures.Future:
        """Fetch `url` on the fetcher's loop; a Future of FetchResult. Thread-safe."""
        return asyncio.run_coroutine_threadsafe(self.fetch(url, method, headers), self._loop)

    def run_soon(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Schedule a coroutine (several `fetch` calls in sequence, say) on the fetcher's loop;
        returns a concurrent.futures.Future. Thread-safe."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def submit_read(self, path: str) -> concurrent.futures.Future:
        """Read a file through Beam's filesystems (local or gs://) with the same body cap."""
        return self._file_pool.submit(self._read_file, path)

    def _read_file(self, path):
        started = time.monotonic()
        try:
            with FileSystems.open(path) as handle:
                body = handle.read(self.config.max_bytes + 1)
        except Exception as exc:  # a missing or unreadable file is a row status, not a crash
            return FetchResult(
                schema.CONNECTION_ERROR,
                f"cannot read {path}: {_short(exc)}",
                final_url=path,
                attempts=1,
                elapsed_ms=_ms_since(started),
            )
        if len(body) > self.config.max_bytes:
            return FetchResult(
                schema.TOO_LARGE,
                f"file larger than --max-bytes {self.config.max_bytes}",
                final_url=path,
                attempts=1,
                elapsed_ms=_ms_since(started),
            )
        return FetchResult(schema.OK, body=body, final_url=path, attempts=1, elapsed_ms=_ms_since(started))

    def close(self) -> None:
        """Closes the session and stops the loop thread (also done when the Fetcher is collected)."""
        self._finalizer()

    def _gate(self, url):
        try:
            parsed = yarl.URL(url)
            name = f"{parsed.host}:{parsed.port}" if parsed.host else None
        except (ValueError, TypeError):
            name = None
        if name is None:
            return None
        gate = self._hosts.get(name)
        if gate is None:
            gate = self._hosts[name] = HostGate(self.config)
        return gate

    async def fetch(self, url, method="GET", headers=None):
        """One URL to one FetchResult; never raises."""
        started = time.monotonic()
        gate = self._gate(url)
        attempt = 0
        patience = ShortagePatience(self.config.concurrency)
        while True:
            result = await self._polite_attempt(gate, url, method, headers)
            if result.local_shortage:  # why: no request left this machine; the URL has no answer yet
                await asyncio.sleep(patience.next_wait(result.error))
                continue
            if result.skipped:
                break
            attempt += 1
            if not result.retryable() or attempt > self.config.retries:
                break
            delay = self.config.backoff * (2 ** (attempt - 1))
            if result.retry_after is not None:
                if result.retry_after > self.config.max_retry_after:
                    result.error += (
                        f"; Retry-After {result.retry_after:g}s exceeds"
                        f" --max-retry-after {self.config.max_retry_after:g}s"
                    )
                    break
                delay = max(delay, result.retry_after)
            await asyncio.sleep(delay)
        result.attempts = attempt
        result.elapsed_ms = _ms_since(started)
        result.retry_after = None
        return result

    async def _polite_attempt(self, gate, url, method, headers):
        if gate is None:
            async with self._slots:
                return await self._deadline_attempt(url, method, headers, self._keep_alive_session)
        async with gate.turn(self._slots):
            # Checked once a slot is ours: the failures may have piled up while we queued.
            skipped = gate.short_circuit(asyncio.get_running_loop().time())
            if skipped:
                return skipped
            await gate.wait_turn()
            await self._rate.wait()
            keep = gate.keep_alive(asyncio.get_running_loop().time())
            result = None
            try:
                session = self._keep_alive_session if keep else self._closing_session
                result = await self._deadline_attempt(url, method, headers, session)
            finally:
                gate.attempt_ended(keep, result, asyncio.get_running_loop().time())
            if not result.local_shortage:  # why: says nothing of the host, and a success resets its breaker
                gate.record(result, asyncio.get_running_loop().time())
            return result

    async def _deadline_attempt(self, url, method, headers, session):
        seen = {}  # the status line, once it arrived: a timeout in the body still records it
        try:
            async with asyncio.timeout(self.config.timeout):
                return await self._attempt(url, method, headers, session, seen)
        except TimeoutError:
            return FetchResult(
                schema.TIMEOUT,
                f"no complete response within --timeout {self.config.timeout:g}s",
                seen.get("status"),
                final_url=seen.get("url"),
            )
        except Exception as exc:  # the last line of defence: a row, never a crash
            return FetchResult(schema.CONNECTION_ERROR, f"unexpected error: {_short(exc)}")

    async def _attempt(self, url, method, headers, session, seen=None):
        seen = {} if seen is None else seen
        current = url
        last_status = None
        for _hop in range(self.config.max_redirects + 1):
            try:
                target = yarl.URL(current)
            except (ValueError, TypeError) as exc:
                return FetchResult(
                    schema.INVALID_URL, f"unparseable URL: {_short(exc)}", last_status, final_url=current
                )
            if target.scheme not in ("http", "https"):
                what = f"scheme {target.scheme!r}" if target.scheme else "no scheme"
                return FetchResult(
                    schema.INVALID_URL, f"{what}: only http and https are fetched", last_status, final_url=current
                )
            if not target.host:
                return FetchResult(schema.INVALID_URL, "URL has no host", last_status, final_url=current)
            canonical = legacy_ipv4(target.host)
            if canonical:  # 2130706433 is 127.0.0.1: judge and connect by the address it means
                target = target.with_host(canonical)
            refusal = self._policy.check_literal(target.host)
            if refusal:
                return FetchResult(schema.BLOCKED, refusal, last_status, final_url=current)
            try:
                async with session.request(method, target, headers=headers, allow_redirects=False) as response:
                    last_status = response.status
                    seen.update(status=response.status, url=current)
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            return FetchResult(
                                schema.HTTP_ERROR,
                                f"HTTP {response.status} without Location",
                                response.status,
                                final_url=current,
                            )
                        try:
                            current = str(response.url.join(yarl.URL(location)))
                        except (ValueError, TypeError) as exc:
                            return FetchResult(
                                schema.INVALID_URL,
                                f"bad redirect Location: {_short(exc)}",
                                response.status,
                                final_url=current,
                            )
                        continue
                    return await self._read_response(response, current, method, _is_conditional(headers))
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, BlockedAddressError):
                    return FetchResult(schema.BLOCKED, str(exc.os_error), last_status, final_url=current)
                gone = _name_not_found(exc.os_error)
                return FetchResult(
                    schema.CONNECTION_ERROR,
                    f"DNS lookup failed for {target.host}" + (": no such name" if gone else ""),
                    last_status,
                    final_url=current,
                    name_not_found=gone,
                    unconnectable=True,
                )
            except aiohttp.InvalidURL as exc:
                return FetchResult(schema.INVALID_URL, f"invalid URL: {_short(exc)}", last_status, final_url=current)
            except aiohttp.ClientConnectorError as exc:
                if is_local_shortage(exc.os_error):
                    return _local_shortage(exc.os_error, last_status, current)
                return FetchResult(
                    schema.CONNECTION_ERROR,
                    f"cannot connect: {_short(exc.os_error)}",
                    last_status,
                    final_url=current,
                    unconnectable=True,
                    refused=_refused(exc.os_error),
                )
            except aiohttp.ConnectionTimeoutError:
                return FetchResult(
                    schema.TIMEOUT,
                    f"could not connect to {target.host} in time",
                    last_status,
                    final_url=current,
                    unconnectable=True,
                )
            except aiohttp.ClientPayloadError as exc:
                if "compress" in str(exc).lower() or "decod" in str(exc).lower():
                    return FetchResult(
                        schema.DECODE_ERROR, f"bad Content-Encoding body: {_short(exc)}", last_status, final_url=current
                    )
                return FetchResult(
                    schema.CONNECTION_ERROR, f"body cut short: {_short(exc)}", last_status, final_url=current
                )
            except aiohttp.ClientResponseError as exc:
                return FetchResult(
                    schema.CONNECTION_ERROR, f"invalid HTTP response: {_short(exc)}", last_status, final_url=current
                )
            except (aiohttp.ClientError, OSError) as exc:
                if is_local_shortage(exc):
                    return _local_shortage(exc, last_status, current)
                return FetchResult(
                    schema.CONNECTION_ERROR, f"{type(exc).__name__}: {_short(exc)}", last_status, final_url=current
                )
        return FetchResult(
            schema.HTTP_ERROR, f"more than {self.config.max_redirects} redirects", last_status, final_url=current
        )

    async def _read_response(self, response, url, method, conditional):
        info = dict(
            http_status=response.status,
            content_type=response.headers.get("Content-Type"),
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            final_url=url,
        )
        if self.config.honor_robots:
            directive = robots_opt_out(response.headers.getall("X-Robots-Tag", []), self._agent_token)
            if directive:
                return FetchResult(schema.OPTED_OUT, f"X-Robots-Tag: {directive}", **info)
        if response.status == 304 and conditional:
            return FetchResult(schema.OK, **info)  # unchanged since the validators we sent: no body
        if not 200 <= response.status < 300:
            result = FetchResult(schema.HTTP_ERROR, f"HTTP {response.status} {response.reason or ''}".strip(), **info)
            result.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return result
        if method == "HEAD":
            return FetchResult(schema.OK, **info)
        cap = self.config.max_bytes
        if (
            response.content_length is not None
            and response.content_length > cap
            and "Content-Encoding" not in response.headers
        ):
            return FetchResult(
                schema.TOO_LARGE, f"Content-Length {response.content_length} exceeds --max-bytes {cap}", **info
            )
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > cap:
                return FetchResult(schema.TOO_LARGE, f"body exceeds --max-bytes {cap}", **info)
            chunks.append(chunk)
        return FetchResult(schema.OK, body=b"".join(chunks), **info)


def _is_conditional(headers):
    """A 304 means "unchanged" only as the answer to If-None-Match / If-Modified-Since."""
    names = {name.lower() for name in (headers or {})}
    return bool(names & {"if-none-match", "if-modified-since"})


def _shut_down(loop, thread, sessions, file_pool):
    if loop.is_closed():
        return
    if threading.current_thread() is not thread:
        for session in sessions:
            try:
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=10)
            except Exception:  # best effort: the process may be exiting
                pass
    loop.call_soon_threadsafe(loop.stop)
    if threading.current_thread() is not thread:
        thread.join(timeout=10)
        loop.close()
    file_pool.shutdown(wait=False)


# getaddrinfo's answers for a name that does not exist (NXDOMAIN, or no address records), as opposed
# to EAI_AGAIN and friends, which say the lookup itself failed and may work later.
_NAME_GONE_ERRNOS = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name))


def _local_shortage(error, last_status, url):
    return FetchResult(
        schema.CONNECTION_ERROR, f"no descriptor: {_short(error)}", last_status, final_url=url, local_shortage=True
    )


def _refused(error):
    """The host answered the connection attempt with a refusal (nothing listens on the port)."""
    return isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED


def _name_not_found(error):
    for candidate in (error, getattr(error, "__cause__", None)):
        if isinstance(candidate, socket.gaierror) and candidate.errno in _NAME_GONE_ERRNOS:
            return True
    return False


def _short(exc, limit=200):
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _ms_since(started):
    return int((time.monotonic() - started) * 1000)


def apply_result(row: schema.Row, result: FetchResult, fetched_at: datetime.datetime) -> schema.Row:
    """Copy a FetchResult onto a row; the body rides along as the internal `_body`."""
    row.update(
        status=result.status,
        error=result.error,
        http_status=result.http_status,
        content_type=result.content_type,
        etag=result.etag,
        last_modified=result.last_modified,
        final_url=result.final_url,
        attempts=result.attempts,
        fetch_ms=result.elapsed_ms,
        fetched_at=fetched_at,
    )
    row["_body"] = result.body
    return row


class FetchDoFn(BoundedFuturesDoFn):
    """Fetches each row's URL (or `_read_path`) with a bounded pool, emitting rows as they finish.

    Rows that already carry a status (a malformed manifest line) pass straight through. All DoFn
    instances of a worker process share one Fetcher, so per-host limits and the global rate hold
    per process however many threads the runner gives the stage.
    """

    def __init__(self, config: FetchConfig) -> None:
        super().__init__(max_pending=config.concurrency * 2)
        self._config = config
        self._shared = shared.Shared()

    def setup(self):
        config = self._config
        self._fetcher = self._shared.acquire(lambda: Fetcher(config))
        self._statuses = {s: beam.metrics.Metrics.counter("fetch", s) for s in schema.STATUSES}
        self._latency = beam.metrics.Metrics.distribution("fetch", "latency_ms")
        self._bytes = beam.metrics.Metrics.counter("fetch", "bytes")

    def process(self, row):
        if row.get("status"):
            yield row
            return
        if row.get("_read_path"):
            future = self._fetcher.submit_read(row["_read_path"])
        elif not (row.get("url") or "").strip():
            yield schema.fail(row, schema.INVALID_URL, "empty URL")
            return
        else:
            future = self._fetcher.submit(row["url"].strip())
        yield from self._track(future, row)

    def _completed(self, row, result):
        self._statuses[result.status].inc()
        self._latency.update(result.elapsed_ms)
        if result.body:
            self._bytes.inc(len(result.body))
        return apply_result(row, result, schema.utc_now())

    def teardown(self):
        self._fetcher = None  # the shared Fetcher closes itself once no instance holds it


class FetchImages(beam.PTransform):
    """Rows in, rows out with status, HTTP facts and the internal `_body` bytes."""

    def __init__(self, config: FetchConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, rows):
        return rows | "FetchUrls" >> beam.ParDo(FetchDoFn(self._config))
