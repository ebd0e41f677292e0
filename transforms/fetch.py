"""Fetching image bytes over HTTP(S), safely and concurrently, as a Beam stage.

`Fetcher` owns one asyncio loop in a background thread and one aiohttp session: a bounded pool of
concurrent requests per DoFn instance, so a worker's CPU stays busy decoding and hashing while the
network waits. `FetchImages` feeds it from a DoFn and emits rows as their fetches complete.
"""
import asyncio
import collections
import concurrent.futures
import dataclasses
import email.utils
import threading
import time

import aiohttp
import apache_beam as beam
import yarl
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms import schema
from transforms.netguard import AddressPolicy, BlockedAddressError, GuardedResolver

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
DEFAULT_USER_AGENT = "beam-image-datasets/0.1 (+https://github.com/; dataset research crawler)"


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    timeout: float = 20.0             # seconds for one attempt: connect, redirects, headers, body
    max_bytes: int = 32 * 1024 * 1024  # body cap after Content-Encoding decoding
    max_redirects: int = 5
    retries: int = 2                  # extra attempts for 429 and 5xx
    backoff: float = 0.5              # first retry delay; doubles each attempt
    max_retry_after: float = 10.0     # a longer Retry-After is not waited for: the row fails
    concurrency: int = 64             # requests in flight per DoFn instance
    per_host: int = 8                 # connections in flight per host
    user_agent: str = DEFAULT_USER_AGENT
    allow_networks: tuple = ()
    honor_robots: bool = True


@dataclasses.dataclass
class FetchResult:
    status: str
    error: str = None
    http_status: int = None
    body: bytes = None
    content_type: str = None
    etag: str = None
    last_modified: str = None
    final_url: str = None
    attempts: int = 0
    elapsed_ms: int = 0
    retry_after: float = None  # only meaningful while deciding on a retry

    def retryable(self):
        return self.status == schema.HTTP_ERROR and self.http_status in RETRY_STATUSES


def parse_retry_after(value):
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


def robots_opt_out(header_values, agent_token):
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


class Fetcher:
    """A pool of concurrent HTTP fetches on a private event loop thread.

    `submit` is thread-safe and returns a concurrent.futures.Future of FetchResult.
    """

    def __init__(self, config):
        self.config = config
        self._policy = AddressPolicy(config.allow_networks)
        self._agent_token = config.user_agent.split("/", 1)[0].strip().lower()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fetcher", daemon=True)
        self._thread.start()
        self._session = self._run(self._open_session())
        self._file_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open_session(self):
        self._slots = asyncio.Semaphore(self.config.concurrency)
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy),
            limit=self.config.concurrency,
            limit_per_host=self.config.per_host,
            ttl_dns_cache=300,
        )
        # trust_env=False: a proxy from the environment would bypass the address policy.
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            headers={"User-Agent": self.config.user_agent, "Accept": "image/*,*/*;q=0.8"},
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )

    def submit(self, url, method="GET", headers=None):
        return asyncio.run_coroutine_threadsafe(self.fetch(url, method, headers), self._loop)

    def submit_read(self, path):
        """Read a file through Beam's filesystems (local or gs://) with the same body cap."""
        return self._file_pool.submit(self._read_file, path)

    def _read_file(self, path):
        started = time.monotonic()
        try:
            with FileSystems.open(path) as handle:
                body = handle.read(self.config.max_bytes + 1)
        except Exception as exc:  # a missing or unreadable file is a row status, not a crash
            return FetchResult(schema.CONNECTION_ERROR, f"cannot read {path}: {_short(exc)}",
                               final_url=path, attempts=1, elapsed_ms=_ms_since(started))
        if len(body) > self.config.max_bytes:
            return FetchResult(schema.TOO_LARGE, f"file larger than --max-bytes {self.config.max_bytes}",
                               final_url=path, attempts=1, elapsed_ms=_ms_since(started))
        return FetchResult(schema.OK, body=body, final_url=path, attempts=1, elapsed_ms=_ms_since(started))

    def close(self):
        if self._loop.is_closed():
            return
        self._run(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._file_pool.shutdown(wait=False)

    async def fetch(self, url, method="GET", headers=None):
        """One URL to one FetchResult; never raises."""
        started = time.monotonic()
        async with self._slots:
            attempt = 0
            while True:
                attempt += 1
                try:
                    async with asyncio.timeout(self.config.timeout):
                        result = await self._attempt(url, method, headers)
                except TimeoutError:
                    result = FetchResult(schema.TIMEOUT,
                                         f"no complete response within --timeout {self.config.timeout:g}s")
                except Exception as exc:  # the last line of defence: a row, never a crash
                    result = FetchResult(schema.CONNECTION_ERROR, f"unexpected error: {_short(exc)}")
                if not result.retryable() or attempt > self.config.retries:
                    break
                delay = self.config.backoff * (2 ** (attempt - 1))
                if result.retry_after is not None:
                    if result.retry_after > self.config.max_retry_after:
                        result.error += (f"; Retry-After {result.retry_after:g}s exceeds"
                                         f" --max-retry-after {self.config.max_retry_after:g}s")
                        break
                    delay = max(delay, result.retry_after)
                await asyncio.sleep(delay)
        result.attempts = attempt
        result.elapsed_ms = _ms_since(started)
        result.retry_after = None
        return result

    async def _attempt(self, url, method, headers):
        current = url
        last_status = None
        for _hop in range(self.config.max_redirects + 1):
            try:
                target = yarl.URL(current)
            except (ValueError, TypeError) as exc:
                return FetchResult(schema.INVALID_URL, f"unparseable URL: {_short(exc)}", last_status,
                                   final_url=current)
            if target.scheme not in ("http", "https"):
                what = f"scheme {target.scheme!r}" if target.scheme else "no scheme"
                return FetchResult(schema.INVALID_URL, f"{what}: only http and https are fetched",
                                   last_status, final_url=current)
            if not target.host:
                return FetchResult(schema.INVALID_URL, "URL has no host", last_status, final_url=current)
            refusal = self._policy.check_literal(target.host)
            if refusal:
                return FetchResult(schema.BLOCKED, refusal, last_status, final_url=current)
            try:
                async with self._session.request(method, target, headers=headers,
                                                 allow_redirects=False) as response:
                    last_status = response.status
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            return FetchResult(schema.HTTP_ERROR, f"HTTP {response.status} without Location",
                                               response.status, final_url=current)
                        try:
                            current = str(response.url.join(yarl.URL(location)))
                        except (ValueError, TypeError) as exc:
                            return FetchResult(schema.INVALID_URL, f"bad redirect Location: {_short(exc)}",
                                               response.status, final_url=current)
                        continue
                    return await self._read_response(response, current, method)
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, BlockedAddressError):
                    return FetchResult(schema.BLOCKED, str(exc.os_error), last_status, final_url=current)
                return FetchResult(schema.CONNECTION_ERROR, f"DNS lookup failed for {target.host}",
                                   last_status, final_url=current)
            except aiohttp.InvalidURL as exc:
                return FetchResult(schema.INVALID_URL, f"invalid URL: {_short(exc)}", last_status,
                                   final_url=current)
            except aiohttp.ClientConnectorError as exc:
                return FetchResult(schema.CONNECTION_ERROR, f"cannot connect: {_short(exc.os_error)}",
                                   last_status, final_url=current)
            except aiohttp.ClientPayloadError as exc:
                if "compress" in str(exc).lower() or "decod" in str(exc).lower():
                    return FetchResult(schema.DECODE_ERROR, f"bad Content-Encoding body: {_short(exc)}",
                                       last_status, final_url=current)
                return FetchResult(schema.CONNECTION_ERROR, f"body cut short: {_short(exc)}", last_status,
                                   final_url=current)
            except aiohttp.ClientResponseError as exc:
                return FetchResult(schema.CONNECTION_ERROR, f"invalid HTTP response: {_short(exc)}",
                                   last_status, final_url=current)
            except (aiohttp.ClientError, OSError) as exc:
                return FetchResult(schema.CONNECTION_ERROR, f"{type(exc).__name__}: {_short(exc)}",
                                   last_status, final_url=current)
        return FetchResult(schema.HTTP_ERROR, f"more than {self.config.max_redirects} redirects",
                           last_status, final_url=current)

    async def _read_response(self, response, url, method):
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
        if response.status == 304:
            return FetchResult(schema.OK, **info)  # conditional request: unchanged, no body
        if not 200 <= response.status < 300:
            result = FetchResult(schema.HTTP_ERROR, f"HTTP {response.status} {response.reason or ''}".strip(),
                                 **info)
            result.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return result
        if method == "HEAD":
            return FetchResult(schema.OK, **info)
        cap = self.config.max_bytes
        if response.content_length is not None and response.content_length > cap and \
                "Content-Encoding" not in response.headers:
            return FetchResult(schema.TOO_LARGE, f"Content-Length {response.content_length} exceeds"
                                                 f" --max-bytes {cap}", **info)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > cap:
                return FetchResult(schema.TOO_LARGE, f"body exceeds --max-bytes {cap}", **info)
            chunks.append(chunk)
        return FetchResult(schema.OK, body=b"".join(chunks), **info)


def _short(exc, limit=200):
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _ms_since(started):
    return int((time.monotonic() - started) * 1000)


def apply_result(row, result, fetched_at):
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


class FetchDoFn(beam.DoFn):
    """Fetches each row's URL (or `_read_path`) with a bounded pool, emitting rows as they finish.

    Rows that already carry a status (a malformed manifest line) pass straight through.
    """

    def __init__(self, config):
        self._config = config

    def setup(self):
        self._fetcher = Fetcher(self._config)
        self._statuses = {s: beam.metrics.Metrics.counter("fetch", s) for s in schema.STATUSES}
        self._latency = beam.metrics.Metrics.distribution("fetch", "latency_ms")
        self._bytes = beam.metrics.Metrics.counter("fetch", "bytes")

    def start_bundle(self):
        self._pending = collections.OrderedDict()

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
        self._pending[future] = row
        if len(self._pending) >= self._config.concurrency * 2:
            # Keep the pool full but bound memory: wait for at least one to finish.
            concurrent.futures.wait(list(self._pending), return_when=concurrent.futures.FIRST_COMPLETED)
        yield from self._drain(block=False)

    def finish_bundle(self):
        for row in self._drain(block=True):
            yield GlobalWindows.windowed_value(row)

    def _drain(self, block):
        done = list(self._pending) if block else [f for f in self._pending if f.done()]
        for future in done:
            row = self._pending.pop(future)
            result = future.result()
            self._statuses[result.status].inc()
            self._latency.update(result.elapsed_ms)
            if result.body:
                self._bytes.inc(len(result.body))
            yield apply_result(row, result, schema.utc_now())

    def teardown(self):
        fetcher = getattr(self, "_fetcher", None)
        if fetcher is not None:
            fetcher.close()


class FetchImages(beam.PTransform):
    """Rows in, rows out with status, HTTP facts and the internal `_body` bytes."""

    def __init__(self, config):
        super().__init__()
        self._config = config

    def expand(self, rows):
        return rows | "FetchUrls" >> beam.ParDo(FetchDoFn(self._config))
