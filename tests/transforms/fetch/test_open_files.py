"""The fetcher out of file descriptors (transforms/fetch/open_files.py): never a live URL's failure.

Before: a socket the OS refused with EMFILE ("Too many open files") settled its row as
`connection_error`, exit 0, and counted against its host; at a 150-descriptor limit, 65 of 120
live URLs of an ingest."""

import errno
import os
import subprocess
import sys
import textwrap

import aiohappyeyeballs
import pyarrow.parquet as pq
import pytest

from pipelines.demo.sample_site import Reply, jpeg
from tests.paths import REPO
from transforms import schema
from transforms.errors import EnvironmentFailure
from transforms.fetch import open_files
from transforms.fetch.client import FetchConfig, Fetcher
from transforms.io import table as table_module

JPEG = {"Content-Type": "image/jpeg"}


class _RefusesSockets:
    """aiohttp's socket opener (aiohappyeyeballs.start_connection, where the socket is created),
    failing with EMFILE the first `times` calls (None: always)."""

    def __init__(self, monkeypatch, times):
        self._open = aiohappyeyeballs.start_connection
        self.left = times
        self.refused = 0
        monkeypatch.setattr(aiohappyeyeballs, "start_connection", self)

    async def __call__(self, *args, **kwargs):
        if self.left is None or self.left > 0:
            self.left = None if self.left is None else self.left - 1
            self.refused += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self._open(*args, **kwargs)


@pytest.fixture
def fetcher():
    made = Fetcher(FetchConfig(allow_networks=("127.0.0.1/32",), timeout=2.0, retries=0, host_failure_limit=2))
    yield made
    made.close()


def test_a_socket_refused_for_want_of_descriptors_is_waited_for_not_the_urls_failure(web, fetcher, monkeypatch):
    web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
    refusing = _RefusesSockets(monkeypatch, times=5)
    result = fetcher.submit(web.url("/a.jpg")).result(timeout=30)
    assert refusing.refused == 5
    assert (result.status, result.attempts) == (schema.OK, 1)  # no retry spent, the host not blamed
    # five refusals are past host_failure_limit=2: a breaker that counted them would skip the host
    assert fetcher.submit(web.url("/a.jpg")).result(timeout=30).status == schema.OK


def test_a_shortage_between_two_refusals_does_not_reset_the_hosts_breaker(fetcher, monkeypatch):
    closed = "http://127.0.0.1:9/a.jpg"  # the discard port: nothing listens, the host refuses
    assert fetcher.submit(closed).result(timeout=30).refused  # the host's first failure
    refusing = _RefusesSockets(monkeypatch, times=3)
    assert fetcher.submit(closed).result(timeout=30).refused  # three shortages, then its second
    assert refusing.refused == 3
    assert fetcher.submit(closed).result(timeout=30).skipped  # host_failure_limit=2: its breaker is open


def test_a_shortage_that_lasts_stops_the_run_in_one_line(web, fetcher, monkeypatch):
    web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
    monkeypatch.setattr(open_files, "SHORTAGE_PATIENCE_S", 0.3)
    _RefusesSockets(monkeypatch, None)
    with pytest.raises(EnvironmentFailure, match=r"too many open files: .* --concurrency"):
        fetcher.submit(web.url("/a.jpg")).result(timeout=30)


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one():
    script = textwrap.dedent(
        """
        import resource
        from transforms.fetch.open_files import raise_open_files_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        raise_open_files_limit()
        print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


# An ingest whose process has few descriptors, its 30 web servers in the same process (so that
# their accepted connections take descriptors too and the fetcher's sockets meet the limit first).
_INGEST_AT_A_LOW_LIMIT = """
import contextlib, resource, sys
from pipelines import ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
out, manifest, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with contextlib.ExitStack() as stack:
    lines = []
    for h in range(1, 31):
        web = stack.enter_context(SampleWebServer(host=f"127.0.0.{h}"))
        for n in range(4):
            web.routes[f"/{n}.jpg"] = Reply(200, jpeg(1000 + 10 * h + n), {"Content-Type": "image/jpeg"})
            lines.append(web.url(f"/{n}.jpg") + "\\tcaption\\n")
    open(manifest, "w").write("".join(lines))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    sys.exit(ingest.main(["--runner=FnApiRunner", f"--manifest=cc12m={manifest}", "--output", out,
                          "--allow-network", "127.0.0.0/8", "--no-report", "--no-progress", "--retries", "0",
                          "--concurrency", "500"]))
"""


def test_an_ingest_short_of_descriptors_records_no_live_url_as_failed(tmp_path):
    out, manifest = tmp_path / "out", tmp_path / "m.tsv"
    done = subprocess.run(
        [sys.executable, "-c", _INGEST_AT_A_LOW_LIMIT, out, manifest, "150"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=240,
    )
    # Either every row is fetched, or the run stops in one line as the environment's failure.
    if done.returncode == 0:
        rows = pq.read_table(table_module.list_table_files(str(out))).to_pylist()
        assert len(rows) == 120 and {r["status"] for r in rows} == {schema.OK}, {r["error"] for r in rows}
    else:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ingest:")]
        assert done.returncode == 1 and len(lines) == 1 and "too many open files" in lines[0], done.stderr[-2000:]
        assert not os.path.exists(os.path.join(out, "images"))
