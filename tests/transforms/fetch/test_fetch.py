"""The fetcher against a real loopback server: every failure the contract names."""

import gzip

import pytest

from pipelines.demo.sample_site import Reply, jpeg
from transforms import schema
from transforms.fetch.client import FetchConfig, Fetcher, parse_retry_after, robots_opt_out

IMAGE = jpeg(1)
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture
def fetch(web):
    fetchers = []

    def run(path_or_url, **config):
        settings = dict(allow_networks=("127.0.0.1/32",), timeout=2.0, backoff=0.01)
        settings.update(config)
        fetcher = Fetcher(FetchConfig(**settings))
        fetchers.append(fetcher)
        url = path_or_url if "://" in path_or_url else web.url(path_or_url)
        return fetcher.submit(url).result(timeout=30)

    yield run
    for fetcher in fetchers:
        fetcher.close()


def test_ok_returns_the_exact_bytes_and_headers(web, fetch):
    web.routes["/a.jpg"] = Reply(
        200, IMAGE, dict(JPEG, ETag='"v1"', **{"Last-Modified": "Sat, 01 Jan 2022 00:00:00 GMT"})
    )
    result = fetch("/a.jpg")
    assert (result.status, result.http_status, result.body) == (schema.OK, 200, IMAGE)
    assert result.etag == '"v1"' and result.last_modified.startswith("Sat")
    assert result.attempts == 1


def test_redirects_are_followed_and_final_url_recorded(web, fetch):
    web.routes["/r1"] = Reply(301, headers={"Location": "/r2"})
    web.routes["/r2"] = Reply(307, headers={"Location": web.url("/a.jpg")})
    web.routes["/a.jpg"] = Reply(200, IMAGE, JPEG)
    result = fetch("/r1")
    assert result.status == schema.OK and result.body == IMAGE
    assert result.final_url == web.url("/a.jpg")


def test_redirect_loop_is_http_error(web, fetch):
    web.routes["/loop"] = Reply(302, headers={"Location": "/loop"})
    result = fetch("/loop", max_redirects=3)
    assert result.status == schema.HTTP_ERROR and "more than 3 redirects" in result.error
    assert web.hits["/loop"] == 4


def test_redirect_to_a_refused_address_is_blocked(web, fetch):
    web.routes["/jump"] = Reply(302, headers={"Location": "http://127.0.0.2:9/secret"})
    result = fetch("/jump")
    assert result.status == schema.BLOCKED and "127.0.0.2" in result.error


def test_a_name_reaches_only_its_allowed_addresses(web, fetch):
    web.routes["/jump"] = Reply(302, headers={"Location": f"http://localhost:{web.port}/a.jpg"})
    web.routes["/a.jpg"] = Reply(200, IMAGE, JPEG)
    # localhost is 127.0.0.1 and ::1; only the allowed 127.0.0.1 is handed to the connector.
    assert fetch("/jump", allow_networks=("127.0.0.1/32",)).status == schema.OK
    result = fetch(f"http://localhost:{web.port}/a.jpg", allow_networks=())
    assert result.status == schema.BLOCKED and "localhost" in result.error
    assert web.hits["/a.jpg"] == 1


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1"])
def test_legacy_numeric_hosts_are_judged_by_the_address_they_mean(web, fetch, host):
    web.routes["/a.jpg"] = Reply(200, IMAGE, JPEG)
    url = f"http://{host}:{web.port}/a.jpg"
    assert fetch(url, allow_networks=()).status == schema.BLOCKED
    assert fetch(url, allow_networks=("127.0.0.1/32",)).status == schema.OK
    assert fetch("http://2852039166/latest").status == schema.BLOCKED  # 169.254.169.254


def test_loopback_is_refused_without_allow_network(web, fetch):
    web.routes["/a.jpg"] = Reply(200, IMAGE, JPEG)
    result = fetch("/a.jpg", allow_networks=())
    assert result.status == schema.BLOCKED
    assert "/a.jpg" not in web.hits  # refused before connecting


def test_redirect_to_non_http_scheme_is_invalid(web, fetch):
    web.routes["/jump"] = Reply(302, headers={"Location": "file:///etc/passwd"})
    assert fetch("/jump").status == schema.INVALID_URL


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "not a url", "http:///nohost", "javascript:alert(1)"])
def test_invalid_urls(fetch, url):
    result = fetch(url)
    assert result.status == schema.INVALID_URL, result
    assert result.error


def test_retry_after_is_honoured_then_success(web, fetch):
    web.routes["/busy.jpg"] = [Reply(429, b"slow down", {"Retry-After": "1"}), Reply(200, IMAGE, JPEG)]
    result = fetch("/busy.jpg")
    assert result.status == schema.OK and result.attempts == 2
    assert result.elapsed_ms >= 900


def test_5xx_retried_then_http_error_with_status(web, fetch):
    web.routes["/down.jpg"] = Reply(503, b"down")
    result = fetch("/down.jpg", retries=2)
    assert (result.status, result.http_status, result.attempts) == (schema.HTTP_ERROR, 503, 3)
    assert web.hits["/down.jpg"] == 3


def test_too_long_retry_after_is_not_waited_for(web, fetch):
    web.routes["/later.jpg"] = Reply(429, b"", {"Retry-After": "3600"})
    result = fetch("/later.jpg", max_retry_after=5)
    assert result.status == schema.HTTP_ERROR and "Retry-After 3600s" in result.error
    assert web.hits["/later.jpg"] == 1


def test_unprompted_304_is_an_http_error_not_an_empty_ok(web, fetch):
    web.routes["/304.jpg"] = Reply(304, b"")
    result = fetch("/304.jpg")
    assert (result.status, result.http_status) == (schema.HTTP_ERROR, 304)


def test_404_is_not_retried(web, fetch):
    result = fetch("/missing.jpg")
    assert (result.status, result.http_status, web.hits["/missing.jpg"]) == (schema.HTTP_ERROR, 404, 1)


def test_slow_headers_time_out(web, fetch):
    web.routes["/slow.jpg"] = Reply(200, IMAGE, JPEG, delay=3)
    result = fetch("/slow.jpg", timeout=0.5)
    assert result.status == schema.TIMEOUT


def test_slow_body_hits_the_whole_request_deadline(web, fetch):
    # Each chunk arrives well within any per-read timeout; only a whole-request deadline stops this.
    web.routes["/drip.jpg"] = Reply(200, jpeg(2, (800, 600)), JPEG, drip=0.2)
    result = fetch("/drip.jpg", timeout=1.0)
    assert result.status == schema.TIMEOUT
    assert result.elapsed_ms < 3000


def test_declared_length_over_cap_is_too_large(web, fetch):
    web.routes["/big.jpg"] = Reply(200, b"x" * 5000, JPEG)
    result = fetch("/big.jpg", max_bytes=1000)
    assert result.status == schema.TOO_LARGE


def test_gzip_bomb_is_capped_after_decoding(web, fetch):
    web.routes["/bomb.jpg"] = Reply(200, gzip.compress(b"\0" * 5_000_000), dict(JPEG, **{"Content-Encoding": "gzip"}))
    result = fetch("/bomb.jpg", max_bytes=1_000_000)
    assert result.status == schema.TOO_LARGE


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_content_encoding_is_decoded(web, fetch, encoding):
    import zlib

    import brotli
    from backports import zstd

    encode = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress}[encoding]
    web.routes["/enc.jpg"] = Reply(200, encode(IMAGE), dict(JPEG, **{"Content-Encoding": encoding}))
    result = fetch("/enc.jpg")
    assert result.status == schema.OK and result.body == IMAGE


def test_corrupt_encoded_body_is_decode_error(web, fetch):
    web.routes["/bad.jpg"] = Reply(200, b"\x1f\x8b\x08\x00garbage" * 20, dict(JPEG, **{"Content-Encoding": "gzip"}))
    result = fetch("/bad.jpg")
    assert result.status == schema.DECODE_ERROR, result.error


def test_body_cut_short_is_connection_error(web, fetch):
    web.routes["/cut.jpg"] = Reply(200, IMAGE, JPEG, cut_after=100)
    result = fetch("/cut.jpg")
    assert result.status == schema.CONNECTION_ERROR, result


def test_connection_refused(fetch):
    result = fetch("http://127.0.0.1:1/a.jpg")
    assert result.status == schema.CONNECTION_ERROR and "111" in result.error or "refused" in result.error.lower()


def test_unknown_host_is_connection_error(fetch):
    result = fetch("http://no-such-host.invalid/a.jpg")
    assert result.status == schema.CONNECTION_ERROR


@pytest.mark.parametrize(
    "header", ["noai", "noimageai", "noindex, noai", "NoAI", "*: noimageai", "beam-image-datasets: noai"]
)
def test_x_robots_tag_opt_out(web, fetch, header):
    web.routes["/opt.jpg"] = Reply(200, IMAGE, dict(JPEG, **{"X-Robots-Tag": header}))
    result = fetch("/opt.jpg")
    assert result.status == schema.OPTED_OUT and result.body is None


def test_x_robots_tag_for_another_crawler_does_not_bind_us(web, fetch):
    web.routes["/opt.jpg"] = Reply(200, IMAGE, dict(JPEG, **{"X-Robots-Tag": "otherbot: noai"}))
    assert fetch("/opt.jpg").status == schema.OK


def test_robots_can_be_ignored_on_request(web, fetch):
    web.routes["/opt.jpg"] = Reply(200, IMAGE, dict(JPEG, **{"X-Robots-Tag": "noai"}))
    assert fetch("/opt.jpg", honor_robots=False).status == schema.OK


def test_parse_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
    assert robots_opt_out(["noindex"], "x") is None


def test_many_concurrent_fetches_all_complete(web):
    for n in range(40):
        web.routes[f"/c{n}.jpg"] = Reply(200, IMAGE, JPEG, delay=0.2)
    fetcher = Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",), concurrency=40, per_host=40))
    try:
        futures = [fetcher.submit(web.url(f"/c{n}.jpg")) for n in range(40)]
        results = [f.result(timeout=30) for f in futures]
    finally:
        fetcher.close()
    assert [r.status for r in results] == [schema.OK] * 40
    # 40 requests of 0.2 s each, in parallel: far less than the 8 s they would take in series.
    assert max(r.elapsed_ms for r in results) < 4000


def test_a_timeout_after_the_status_line_keeps_the_status(web, fetch):
    # the status line and headers arrive at once, then the body drips past the deadline
    web.routes["/slow-body.jpg"] = Reply(200, IMAGE, JPEG, drip=0.2)
    result = fetch("/slow-body.jpg", timeout=0.5, retries=0)
    assert result.status == schema.TIMEOUT and result.http_status == 200
    assert result.final_url == web.url("/slow-body.jpg")
    web.routes["/slow-head.jpg"] = Reply(200, IMAGE, JPEG, delay=1.0)  # nothing arrived: nothing to record
    assert fetch("/slow-head.jpg", timeout=0.5, retries=0).http_status is None


def test_a_refused_connection_is_flagged(fetch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetch(f"http://127.0.0.1:{port}/a.jpg", retries=0)
    assert result.status == schema.CONNECTION_ERROR and result.refused and not result.name_not_found
