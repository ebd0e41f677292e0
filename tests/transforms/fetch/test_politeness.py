"""Per-host caps, adaptive pacing, failing-host short-circuit, global rate, honest User-Agent."""

import pytest

from pipelines.demo.sample_site import Reply, jpeg
from transforms import schema
from transforms.fetch.client import FetchConfig, Fetcher, FetchResult, HostGate, user_agent

IMAGE = jpeg(1)
JPEG = {"Content-Type": "image/jpeg"}


def fetch_all(web, paths, **config):
    settings = dict(allow_networks=("127.0.0.1/32",), timeout=2.0, backoff=0.01)
    settings.update(config)
    fetcher = Fetcher(FetchConfig(**settings))
    try:
        futures = [fetcher.submit(web.url(p)) for p in paths]
        return [f.result(timeout=60) for f in futures]
    finally:
        fetcher.close()


def test_per_host_cap_bounds_requests_in_flight(web):
    for n in range(12):
        web.routes[f"/s{n}.jpg"] = Reply(200, IMAGE, JPEG, delay=0.15)
    results = fetch_all(web, [f"/s{n}.jpg" for n in range(12)], per_host=2, concurrency=64)
    assert all(r.status == schema.OK for r in results)
    assert web.max_in_flight == 2


def test_gate_slows_down_on_429_and_recovers_on_success():
    gate = HostGate(FetchConfig())
    gate.record(FetchResult(schema.HTTP_ERROR, "busy", 429), 0)
    assert gate.interval == 0.25
    gate.record(FetchResult(schema.HTTP_ERROR, "busy", 503, retry_after=4), 0)
    assert gate.interval == 4
    gate.record(FetchResult(schema.HTTP_ERROR, "busy", 429, retry_after=999), 0)
    assert gate.interval == FetchConfig().max_host_interval
    for _ in range(60):
        gate.record(FetchResult(schema.OK, http_status=200), 0)
    assert gate.interval == 0.0


def test_429_spaces_out_the_next_requests_to_that_host(web):
    web.routes["/first.jpg"] = [Reply(429, b"", {"Retry-After": "1"}), Reply(200, IMAGE, JPEG)]
    for n in range(3):
        web.routes[f"/next{n}.jpg"] = Reply(200, IMAGE, JPEG)
    fetcher = Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",), backoff=0.01))
    try:
        assert fetcher.submit(web.url("/first.jpg")).result(timeout=30).status == schema.OK
        results = [fetcher.submit(web.url(f"/next{n}.jpg")) for n in range(3)]
        assert all(f.result(timeout=30).status == schema.OK for f in results)
    finally:
        fetcher.close()
    starts = [t for (_m, path, _h, t) in web.requests if path.startswith("/next")]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.5, gaps  # paced by the Retry-After the host asked for (easing off slowly)


def _closed_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_host_that_cannot_be_reached_is_short_circuited():
    port = _closed_port()  # nothing listens: every attempt is refused
    fetcher = Fetcher(
        FetchConfig(allow_networks=("127.0.0.1/32",), timeout=2.0, per_host=1, host_failure_limit=3, host_cooldown=60)
    )
    try:
        results = [
            f.result(timeout=30) for f in [fetcher.submit(f"http://127.0.0.1:{port}/{n}.jpg") for n in range(15)]
        ]
    finally:
        fetcher.close()
    assert all(r.status == schema.CONNECTION_ERROR for r in results)
    skipped = [r for r in results if r.error.startswith("host skipped")]
    assert len(skipped) == 12 and sum(r.attempts for r in results) == 3
    assert "consecutive failures" in skipped[0].error and "cannot connect" in skipped[0].error


def test_a_slow_but_alive_host_is_never_short_circuited(web):
    for n in range(6):
        web.routes[f"/hang{n}.jpg"] = Reply(200, IMAGE, JPEG, delay=1.0)
    web.routes["/fine.jpg"] = Reply(200, IMAGE, JPEG)
    results = fetch_all(
        web, [f"/hang{n}.jpg" for n in range(6)] + ["/fine.jpg"], timeout=0.3, per_host=1, host_failure_limit=3
    )
    assert [r.status for r in results] == [schema.TIMEOUT] * 6 + [schema.OK]
    assert not any(r.error and r.error.startswith("host skipped") for r in results)
    assert sum(web.hits.values()) == 7  # every URL was really tried


def test_host_is_tried_again_after_cooldown():
    port = _closed_port()
    fetcher = Fetcher(
        FetchConfig(allow_networks=("127.0.0.1/32",), timeout=1.0, host_failure_limit=1, host_cooldown=0.5)
    )
    url = f"http://127.0.0.1:{port}/a.jpg"
    try:
        assert fetcher.submit(url).result(timeout=30).status == schema.CONNECTION_ERROR
        assert fetcher.submit(url).result(timeout=30).error.startswith("host skipped")
        from pipelines.demo.sample_site import SampleWebServer

        with SampleWebServer({"/a.jpg": Reply(200, IMAGE, JPEG)}, port=port):
            import time

            time.sleep(0.6)
            assert fetcher.submit(url).result(timeout=30).status == schema.OK
    finally:
        fetcher.close()


def test_global_rate_limit(web):
    for n in range(10):
        web.routes[f"/r{n}.jpg"] = Reply(200, IMAGE, JPEG)
    fetch_all(web, [f"/r{n}.jpg" for n in range(10)], max_rate=20, per_host=10)
    starts = sorted(t for (_m, _p, _h, t) in web.requests)
    assert starts[-1] - starts[0] >= 9 / 20 - 0.05


@pytest.mark.parametrize(
    "contact,expected",
    [
        (None, "beam-image-datasets/0.1 (image dataset research crawler)"),
        ("data@example.org", "contact: data@example.org"),
    ],
)
def test_user_agent_is_honest_and_carries_the_contact(web, contact, expected):
    web.routes["/ua.jpg"] = Reply(200, IMAGE, JPEG)
    fetch_all(web, ["/ua.jpg"], user_agent=user_agent(contact))
    assert expected in web.requests[0][2]["User-Agent"]
