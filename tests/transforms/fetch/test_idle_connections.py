"""The sockets the fetcher holds: at most --concurrency in use, idle ones only for waiting requests.

aiohttp's connector `limit` counts connections in use only; its pool kept every finished one open
for 15 s, so 320 URLs on 40 hosts held 320 sockets at --concurrency 64. Keep-alive must still
carry many URLs of one host over a few connections.
"""

import asyncio
import contextlib

import pytest

from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from transforms import schema
from transforms.fetch.client import IDLE_KEEPALIVE_S, FetchConfig, Fetcher, FetchResult, HostGate

IMAGE = jpeg(2)
JPEG = {"Content-Type": "image/jpeg"}


async def _all(fetcher, urls):
    return await asyncio.gather(*(fetcher.fetch(url) for url in urls))


def _established_to(ports):
    """TCP connections of this network namespace in state ESTABLISHED whose remote port is one of
    `ports` (the servers': so the client's side of each connection, not the server's)."""
    # why /proc: psutil is only in the bench extra, and CI installs the test extra
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port, state = int(fields[2].rsplit(":", 1)[1], 16), fields[3]
                count += state == "01" and remote_port in ports
    return count


def _fetch(urls, **config):
    """Fetches `urls` with one Fetcher; returns (results, client sockets still open to the servers)."""
    settings = dict(allow_networks=("127.0.0.0/8",), timeout=10.0)
    settings.update(config)
    fetcher = Fetcher(FetchConfig(**settings))
    try:
        # why gather: all requests are queued at once, as a busy DoFn queues them, whatever the
        # scheduling of this test's thread
        results = fetcher.run_soon(_all(fetcher, urls)).result(timeout=60)
        ports = {int(url.split(":")[2].split("/")[0]) for url in urls}
        return results, _established_to(ports)
    finally:
        fetcher.close()


def test_idle_sockets_across_many_hosts_stay_within_concurrency():
    paths = [f"/p{n}.jpg" for n in range(4)]
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(SampleWebServer({p: Reply(200, IMAGE, JPEG) for p in paths}, host=f"127.0.0.{h}"))
            for h in range(1, 41)
        ]
        urls = [server.url(p) for server in servers for p in paths]
        results, held = _fetch(urls, concurrency=16)
    assert [r.status for r in results] == [schema.OK] * 160
    # before: all 160 connections stayed pooled (idle) for 15 s after their answer
    assert held <= 16, held


@pytest.mark.parametrize("concurrency", [16, 2])
def test_many_urls_of_one_host_reuse_a_few_connections(web, concurrency):
    for n in range(120):
        web.routes[f"/one{n}.jpg"] = Reply(200, IMAGE, JPEG)
    results, _held = _fetch([web.url(f"/one{n}.jpg") for n in range(120)], concurrency=concurrency, per_host=4)
    assert all(r.status == schema.OK for r in results)
    # the first requests, before any other waits, close theirs; then up to --per-host are reused
    # (without keep-alive: 120)
    assert web.connections <= 3 * min(4, concurrency), web.connections


def test_host_gate_keeps_a_connection_only_for_a_waiting_request():
    gate = HostGate(FetchConfig(per_host=4))
    assert gate.keep_alive(now=0.0) is False  # nobody waits: closed after its answer
    gate.waiting = 2
    assert [gate.keep_alive(now=0.0) for _ in range(3)] == [True, True, False]  # one kept per waiting request
    gate.waiting = 0
    gate.attempt_ended(True, FetchResult(schema.OK, http_status=200), now=1.0)
    gate.attempt_ended(True, FetchResult(schema.TIMEOUT, "slow"), now=1.0)  # broken: not left open
    assert (gate.kept, gate.idle) == (0, 1)
    assert gate.keep_alive(now=1.5) is True  # takes the one left open
    gate.attempt_ended(True, FetchResult(schema.OK, http_status=200), now=2.0)
    assert gate.keep_alive(now=2.0 + IDLE_KEEPALIVE_S + 0.1) is False  # the pool closed it by now
