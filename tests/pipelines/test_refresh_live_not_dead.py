"""Live URLs the refresh must never call `dead` (found by an audit of the nightly refresh): a real
loopback web, real snapshots, the real job over several nights with one --history.

- a server that answers 404 to HEAD but serves the picture to GET;
- a server that drops the connection on HEAD (no answer) but serves the picture to GET;
- a server whose HEAD fails with a 500 (a handler written for GET only) but serves GET;
- a server that turns the conditional request down (412, 400) but serves the picture to a plain GET;
- a refresh run without the --allow-network its snapshot was ingested with: every URL there is
  refused by the address policy, which is a 'gone' answer (dead on the second such night);
- a photo redirected to its own file name elsewhere (http -> https, a CDN host) or to a slug that
  merely contains a placeholder word ("piano-image.jpg", "casino_photo.jpg"): the same picture,
  judged a placeholder by its name;
- a snapshot table whose rows have no key: all were merged into one row, "balanced" behind exit 0;
- two slices of one manifest ingested apart, given as two --snapshots: one URL of each key merged away;
- a key whose URL changed between two snapshots (a re-ingested, edited manifest renumbers its
  lines): the old URL's history is not the new URL's;
- a server that never answers HEAD (the request times out) but serves the picture to GET;
- a host serving one maintenance page (HTML, in place or through a redirect) for most of its URLs:
  every URL a soft 404, 'gone', all dead on the second night;
- a host sending most of its URLs to one consent (or login) page that names the photo each came
  from: a page of its own for each URL, each a soft 404, all dead on the second night;
- a host answering 404 to every path for two nights (a deploy gone wrong): all its URLs dead at once;
- a failure streak of transient nights ending in one 404: the 500 counted as evidence, one 404 was
  enough (also read from a history written before the gone/evidence counters).
"""

import datetime
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines import ingest as ingest_job
from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options
from tests.synthetic_out import fetched_ok_row, write_snapshot_table
from tests.table_readers import night_status as night
from tests.table_readers import one_line
from transforms import schema
from transforms.liveness import verdicts

JPEG = {"Content-Type": "image/jpeg"}


def write_snapshot(directory, rows):
    """An ingest table (as ingest writes it) of `rows`: [(key, url, body)], every row ok, no validator."""
    return write_snapshot_table(directory, [fetched_ok_row(key, url, body) for key, url, body in rows])


def test_a_404_to_head_alone_is_no_evidence_when_get_serves_the_picture(tmp_path):
    body = jpeg(7)
    with SampleWebServer() as web:
        # servers whose handlers only know GET: HEAD falls through to their 404 page
        web.routes["/photo.jpg"] = lambda method, headers, n: Reply(404) if method == "HEAD" else Reply(200, body, JPEG)
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", web.url("/photo.jpg"), body)])
        nights = [night(tmp_path, snapshot, d)["cc3m:1"] for d in ("2030-02-01", "2030-02-02", "2030-02-03")]
    assert [r["status"] for r in nights] == [verdicts.ALIVE] * 3, [r["reason"] for r in nights]
    assert all(r["method"] == verdicts.HEAD_GET and r["http_status"] == 200 for r in nights)


@pytest.mark.parametrize(
    "head_reply",
    [
        # servers (and their firewalls) that hang up on HEAD: a reset, no status line
        pytest.param(Reply(reset=True), id="dropped-without-an-answer"),
        # frameworks that route GET only and fail on anything else: HEAD is a 500, GET the picture.
        # Settled by the HEAD, such a URL was unreachable every night, then dead after 30.
        pytest.param(Reply(500, b"oops"), id="a-500"),
    ],
)
def test_a_head_failing_alone_is_no_verdict_when_get_serves_the_picture(tmp_path, head_reply):
    body = jpeg(12)
    with SampleWebServer() as web:
        web.routes["/photo.jpg"] = lambda method, headers, n: head_reply if method == "HEAD" else Reply(200, body, JPEG)
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", web.url("/photo.jpg"), body)])
        row = night(tmp_path, snapshot, "2030-02-01")["cc3m:1"]
    assert (row["status"], row["method"], row["http_status"]) == (verdicts.ALIVE, verdicts.HEAD_GET, 200), row["reason"]


def test_a_head_that_times_out_is_no_verdict_when_get_serves_the_picture(tmp_path):
    body = jpeg(20)
    with SampleWebServer() as web:
        # servers (and proxies) that never answer HEAD: the request times out, GET is served.
        # Settled by the HEAD, such a URL was unreachable every night, then dead after
        # --unreachable-dead-after nights (2 here)
        web.routes["/photo.jpg"] = lambda method, headers, n: (
            Reply(200, b"", JPEG, delay=3) if method == "HEAD" else Reply(200, body, JPEG)
        )
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", web.url("/photo.jpg"), body)])
        nights = [
            night(tmp_path, snapshot, d, timeout=1, **{"unreachable-dead-after": 2})["cc3m:1"]
            for d in ("2030-02-01", "2030-02-02")
        ]
    assert [r["status"] for r in nights] == [verdicts.ALIVE] * 2, [r["reason"] for r in nights]
    assert all((r["method"], r["requests"], r["http_status"]) == (verdicts.HEAD_GET, 2, 200) for r in nights)


@pytest.mark.parametrize("refusal", [412, 400])
def test_a_conditional_request_turned_down_is_no_verdict_when_a_plain_get_serves_the_picture(tmp_path, refusal):
    body = jpeg(14)
    with SampleWebServer() as web:
        # servers and caches that answer If-None-Match with an error instead of 304 or 200
        web.routes["/photo.jpg"] = lambda method, headers, n: (
            Reply(refusal) if headers.get("If-None-Match") else Reply(200, body, JPEG)
        )
        snapshot = write_snapshot_table(
            str(tmp_path / "snapshot"), [fetched_ok_row("cc3m:1", web.url("/photo.jpg"), body, etag='"v1"')]
        )
        row = night(tmp_path, snapshot, "2030-02-01")["cc3m:1"]
    assert (row["status"], row["method"], row["http_status"]) == (verdicts.ALIVE, verdicts.CONDITIONAL, 200), row
    assert row["requests"] == 2


def test_a_photo_redirected_to_a_name_that_merely_contains_a_placeholder_word_is_alive(tmp_path):
    pictures = {"/pics/piano-image.jpg": jpeg(15), "/photo/123": jpeg(16), "/p/2": jpeg(17)}
    with SampleWebServer() as web:
        # the photo's own file name on another path (a CDN), and slugs that contain "no-image",
        # "no_photo" inside a word
        targets = {"/pics/piano-image.jpg": "/cdn/pics/piano-image.jpg", "/photo/123": "/photo/123/casino_photo.jpg"}
        targets["/p/2"] = "/p/2/volcano-image.png"
        for path, target in targets.items():
            web.routes[path] = Reply(301, b"", {"Location": target})
            web.routes[target] = Reply(200, pictures[path], JPEG)
        snapshot = write_snapshot(
            str(tmp_path / "snapshot"), [(f"cc3m:{n}", web.url(p), b) for n, (p, b) in enumerate(pictures.items())]
        )
        nights = [night(tmp_path, snapshot, d) for d in ("2030-02-01", "2030-02-02")]
    for rows in nights:
        assert {r["status"] for r in rows.values()} == {verdicts.ALIVE}, [r["reason"] for r in rows.values()]
        assert not any(r["placeholder"] for r in rows.values())


def test_a_url_that_is_really_gone_is_still_dead_after_the_get_confirms_it(tmp_path):
    with SampleWebServer() as web:
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", web.url("/gone.jpg"), jpeg(8))])
        nights = [night(tmp_path, snapshot, d)["cc3m:1"] for d in ("2030-02-01", "2030-02-02")]
        hits = web.hits["/gone.jpg"]
    assert [r["status"] for r in nights] == [verdicts.UNREACHABLE, verdicts.DEAD]
    assert [r["failure"] for r in nights] == [verdicts.GONE, verdicts.GONE]
    assert hits == 4  # HEAD and GET each night


def test_a_key_whose_url_changed_does_not_inherit_the_old_urls_history(tmp_path):
    live, other = jpeg(9), jpeg(10)
    with SampleWebServer() as web:
        web.routes["/live.jpg"] = [Reply(200, live, JPEG)]
        web.routes["/other.jpg"] = Reply(200, other, JPEG)
        # the first manifest: line 1 is a URL that died (404, /removed.jpg is not served)
        first = write_snapshot(
            str(tmp_path / "snapshot-1"),
            [("cc3m:1", web.url("/removed.jpg"), jpeg(11)), ("cc3m:2", web.url("/other.jpg"), other)],
        )
        assert night(tmp_path, first, "2030-02-01")["cc3m:1"]["status"] == verdicts.UNREACHABLE
        assert night(tmp_path, first, "2030-02-02")["cc3m:1"]["status"] == verdicts.DEAD
        # the manifest, edited (the dead line dropped), ingested again: line 1 is another URL now,
        # alive at its ingest and failing for the first time tonight (a 503)
        second = write_snapshot(
            str(tmp_path / "snapshot-2"),
            [("cc3m:1", web.url("/live.jpg"), live), ("cc3m:2", web.url("/other.jpg"), other)],
        )
        web.routes["/live.jpg"] = Reply(503, b"busy", {"Retry-After": "0"})
        # why --snapshot-replaced: the history's nights checked snapshot-1 (history_identity)
        tonight = night(tmp_path, second, "2030-02-03", **{"snapshot-replaced": True})
    row = tonight["cc3m:1"]
    assert row["status"] == verdicts.UNREACHABLE, row["reason"]
    assert row["consecutive_failures"] == 1 and row["previous_status"] is None and not row["newly_dead"]
    assert tonight["cc3m:2"]["status"] == verdicts.ALIVE and tonight["cc3m:2"]["previous_nights"] == 2


def test_two_slices_of_a_manifest_in_one_night_are_refused_not_merged(tmp_path, capsys):
    """Two outputs of slices of one manifest ingested apart both hold cc3m:1, cc3m:2 (line
    numbers). Given together, the night merged each key to one row: 2 of the 4 URLs got no
    verdict (no status row, so never deleted, never reported), exit 0. The same URL under one key
    in two snapshots (a re-ingest) is still one row."""
    with SampleWebServer() as web:
        for name in ("a1", "a2", "b1", "b2"):
            web.routes[f"/{name}.jpg"] = Reply(200, jpeg(len(name) + ord(name[0]) + int(name[1])), JPEG)
        first = write_snapshot(
            str(tmp_path / "slice-a"),
            [("cc3m:1", web.url("/a1.jpg"), jpeg(99)), ("cc3m:2", web.url("/a2.jpg"), jpeg(98))],
        )
        second = write_snapshot(
            str(tmp_path / "slice-b"),
            [("cc3m:1", web.url("/a1.jpg"), jpeg(99)), ("cc3m:2", web.url("/b2.jpg"), jpeg(97))],
        )
        args = {"snapshot": [first, second], "output": str(tmp_path / "night"), "allow-network": "127.0.0.1/32"}
        capsys.readouterr()
        assert refresh_job.main(local_options(**args, timeout=5, retries=0)) == 2
        line = one_line(capsys, "refresh")
        assert "cc3m:2" in line and "/a2.jpg" in line and "/b2.jpg" in line, line
        assert not os.path.exists(os.path.join(str(tmp_path / "night"), "status"))
        assert web.hits.get("/b2.jpg", 0) == 0
        # the same URL twice (a re-ingest of slice a): one row, no refusal
        again = write_snapshot(str(tmp_path / "slice-a-again"), [("cc3m:2", web.url("/a2.jpg"), jpeg(98))])
        args["snapshot"] = [first, again]
        assert refresh_job.main(local_options(**args, timeout=5, retries=0)) == 0
    rows = ds.dataset(os.path.join(str(tmp_path / "night"), "status"), format="parquet").to_table().to_pylist()
    assert sorted(r["key"] for r in rows) == ["cc3m:1", "cc3m:2"]


def test_a_refresh_without_the_ingests_allow_network_stops_before_judging_its_urls(tmp_path, capsys):
    body = jpeg(13)
    with SampleWebServer() as web:
        web.routes["/photo.jpg"] = Reply(200, body, JPEG)
        manifest = tmp_path / "cc3m.tsv"
        manifest.write_text(f"a photo\t{web.url('/photo.jpg')}\n")
        out = str(tmp_path / "out")
        network = {"allow-network": "127.0.0.1/32", "no-report": True}
        assert ingest_job.main(local_options(manifest=f"cc3m={manifest}", output=out, **network)) == 0
        capsys.readouterr()

        def refresh(output, *network):
            args = {"snapshot": out, "output": str(tmp_path / output), "night": "2030-02-01"}
            if network:
                args["allow-network"] = list(network)
            return refresh_job.main(local_options(**args))

        # a tired operator's nightly command without the flag: each night every URL was refused by
        # the address policy ('gone'), and on the second such night all were dead
        assert refresh("forgot") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--allow-network 127.0.0.1/32" in err and "Traceback" not in err, err
        assert not os.path.exists(tmp_path / "forgot")  # stopped before anything was created
        # a wider network covers the ingest's
        assert refresh("wider", "127.0.0.0/8") == 0
    [row] = ds.dataset(str(tmp_path / "wider" / "status"), format="parquet").to_table().to_pylist()
    assert row["status"] == verdicts.ALIVE, row["reason"]


def test_snapshot_rows_without_a_key_are_bad_input_not_merged_into_one(tmp_path, capsys):
    rows = [fetched_ok_row(None, f"http://127.0.0.1:9/{n}.jpg", jpeg(20 + n)) for n in range(3)]
    snapshot = write_snapshot_table(str(tmp_path / "snapshot"), rows)
    out = tmp_path / "refresh"
    args = {"snapshot": snapshot, "output": str(out), "night": "2030-02-01", "allow-network": "127.0.0.1/32"}
    assert refresh_job.main(local_options(**args)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("refresh:")]
    assert len(err) == 1 and "no key" in err[0] and "Traceback" not in err[0], err
    assert not (out / "status").exists() and not (out / "summary.json").exists()


def test_transient_nights_ending_in_one_404_are_not_dead(tmp_path):
    body = jpeg(18)
    answers = {"night": 0}
    with SampleWebServer() as web:
        # night 1 the server fails (500), nights 2 and 3 it answers 404: one 'gone' answer on
        # night 2 is not proof (a deploy that briefly breaks a path), two are
        web.routes["/photo.jpg"] = lambda method, headers, n: Reply(500) if answers["night"] == 0 else Reply(404)
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", web.url("/photo.jpg"), body)])
        nights = []
        for n, date in enumerate(("2030-02-01", "2030-02-02", "2030-02-03")):
            answers["night"] = n
            nights.append(night(tmp_path, snapshot, date)["cc3m:1"])
    assert [r["status"] for r in nights] == [verdicts.UNREACHABLE, verdicts.UNREACHABLE, verdicts.DEAD], [
        r["reason"] for r in nights
    ]
    assert [(r["consecutive_failures"], r["gone_failures"]) for r in nights] == [(1, 0), (2, 1), (3, 2)]
    assert "1 'gone' answer(s) in 2 failed night(s)" in nights[1]["reason"]


@pytest.mark.parametrize("failure, verdict", [("gone", verdicts.DEAD), ("transient", verdicts.UNREACHABLE)])
def test_a_history_without_the_answer_counters_is_read_and_counts_its_nights_answer(tmp_path, failure, verdict):
    with SampleWebServer() as web:
        url = web.url("/photo.jpg")
        snapshot = write_snapshot(str(tmp_path / "snapshot"), [("cc3m:1", url, jpeg(19))])
        # a night written before gone_failures/evidence_failures existed: one failed night
        old = [n for n in schema.REFRESH_FIELDS if n[0] not in ("gone_failures", "evidence_failures")]
        row = {n: None for n, _ in old} | {"key": "cc3m:1", "url": url, "status": verdicts.UNREACHABLE}
        row |= {"night": datetime.date(2030, 1, 31), "failure": failure, "consecutive_failures": 1}
        directory = tmp_path / "history" / "2030-01-31"
        directory.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([row], schema=pa.schema(old)), str(directory / "part-0.parquet"))
        (directory / "_COMPLETE").write_text(
            json.dumps({"night": "2030-01-31", "rows": 1, "files": ["part-0.parquet"]})
        )
        tonight = night(tmp_path, snapshot, "2030-02-01")["cc3m:1"]  # a 404 (no route)
    assert (tonight["status"], tonight["previous_status"]) == (verdict, verdicts.UNREACHABLE), tonight["reason"]
    assert tonight["consecutive_failures"] == 2 and tonight["gone_failures"] == (2 if failure == "gone" else 1)


MAINTENANCE = b"<html><body>Down for maintenance, back soon</body></html>"


def test_one_page_for_most_urls_of_a_host_is_an_outage_not_each_url_gone(tmp_path):
    pictures = {f"/p/{n}.jpg": jpeg(30 + n) for n in range(8)}
    html = {"Content-Type": "text/html"}
    with SampleWebServer() as web:
        # 6 of the host's 8 URLs get its maintenance page: 3 in place, 3 through a redirect
        for n, path in enumerate(pictures):
            if n < 3:
                web.routes[path] = Reply(200, MAINTENANCE, html)
            elif n < 6:
                web.routes[path] = Reply(302, b"", {"Location": "/maintenance"})
            else:
                web.routes[path] = Reply(200, pictures[path], JPEG)
        web.routes["/maintenance"] = Reply(200, MAINTENANCE, html)
        rows = [(f"cc3m:{n}", web.url(path), body) for n, (path, body) in enumerate(pictures.items())]
        snapshot = write_snapshot(str(tmp_path / "snapshot"), rows)
        nights = [night(tmp_path, snapshot, d) for d in ("2030-02-01", "2030-02-02")]
    for rows in nights:
        down = [rows[f"cc3m:{n}"] for n in range(6)]
        assert {(r["status"], r["failure"]) for r in down} == {(verdicts.UNREACHABLE, verdicts.NO_HOST)}, [
            r["reason"] for r in down
        ]
        assert all("host outage" in r["reason"] and "6 of its 8 URLs" in r["reason"] for r in down)
        assert {rows[f"cc3m:{n}"]["status"] for n in (6, 7)} == {verdicts.ALIVE}
    assert nights[1]["cc3m:0"]["evidence_failures"] == 2 and nights[1]["cc3m:0"]["gone_failures"] == 0
    summary = json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())
    assert summary["host_outages"] == [
        {"host": "127.0.0.1", "page_sha256": hashlib.sha256(MAINTENANCE).hexdigest(), "urls": 6, "urls_checked": 8}
    ]


def bot_wall(method, headers, count):
    """A bot wall's 200 page, its incident id and time new on every answer (Incapsula, Akamai style)."""
    incident = f"{808000450231937862 + count}-{hashlib.sha256(repr(headers).encode()).hexdigest()[:12]}"
    body = (
        "<html><head><title>Request unsuccessful</title></head><body>Request unsuccessful. Incapsula"
        f" incident ID: {incident} at {datetime.datetime.now().isoformat()}</body></html>"
    )
    return Reply(200, body.encode(), {"Content-Type": "text/html"})


def removed_photo_page(title):
    return Reply(200, f"<html><body>The photo '{title}' was removed by its owner</body></html>".encode(), HTML)


HTML = {"Content-Type": "text/html"}
TITLES = ("sunset over the bay", "red kite", "old mill", "harbour at dawn", "snowy pass", "market day")


@pytest.mark.parametrize("pages", ["bot wall, an id on every answer", "each photo's own removed page"])
def test_a_page_that_differs_only_in_ids_is_one_page_of_an_outage_but_pages_in_words_are_gone(tmp_path, pages):
    """A bot wall or maintenance page carrying a request id or a time (a new one on every answer)
    is one page of the host: its 6 URLs of 8 are a host outage, not 6 soft 404s dead on the second
    night. Before, pages were compared byte for byte, and these live URLs were dead. Pages that
    differ in words (each removed photo's own page) stay evidence about each URL."""
    pictures = {f"/p/{n}.jpg": jpeg(50 + n) for n in range(8)}
    with SampleWebServer() as web:
        for n, path in enumerate(pictures):
            if n >= 6:
                web.routes[path] = Reply(200, pictures[path], JPEG)
            elif pages.startswith("bot wall"):
                web.routes[path] = bot_wall
            else:
                web.routes[path] = removed_photo_page(TITLES[n])
        rows = [(f"cc3m:{n}", web.url(path), body) for n, (path, body) in enumerate(pictures.items())]
        snapshot = write_snapshot(str(tmp_path / "snapshot"), rows)
        nights = [night(tmp_path, snapshot, d) for d in ("2030-02-01", "2030-02-02")]
    summary = json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())
    assert {nights[1][f"cc3m:{n}"]["status"] for n in (6, 7)} == {verdicts.ALIVE}
    down = [nights[1][f"cc3m:{n}"] for n in range(6)]
    if pages.startswith("bot wall"):
        assert {(r["status"], r["failure"]) for r in down} == {(verdicts.UNREACHABLE, verdicts.NO_HOST)}, [
            r["reason"] for r in down
        ]
        assert all("host outage" in r["reason"] and "6 of its 8 URLs" in r["reason"] for r in down)
        [outage] = summary["host_outages"]
        assert (outage["host"], outage["urls"], outage["urls_checked"]) == ("127.0.0.1", 6, 8)
        assert len(outage["page_sha256"]) == 64
    else:
        assert [r["status"] for r in down] == [verdicts.DEAD] * 6, [r["reason"] for r in down]
        assert summary["host_outages"] == []


def consent_wall(method, headers, count):
    """A consent wall's 200 page naming the page the visitor came from (its words: no id to blank)."""
    body = f"<html><body>Before you continue to '{TITLES[count % len(TITLES)]}': we use cookies</body></html>"
    return Reply(200, body.encode(), HTML)


def test_a_redirect_of_most_urls_of_a_host_to_one_consent_page_is_an_outage(tmp_path):
    """A host that sends 6 of its 8 URLs to its consent page (GDPR walls, a login page), the page
    naming the photo each came from: one page of the host by its address, a host outage, not 6 soft
    404s in words. Before, each answer was a page of its own and the 6 live URLs were dead on the
    second night."""
    pictures = {f"/p/{n}.jpg": jpeg(60 + n) for n in range(8)}
    with SampleWebServer() as web:
        for n, path in enumerate(pictures):
            if n < 6:
                web.routes[path] = Reply(302, b"", {"Location": f"/consent?continue={path}&session={n}"})
            else:
                web.routes[path] = Reply(200, pictures[path], JPEG)
        web.routes["/consent"] = consent_wall
        rows = [(f"cc3m:{n}", web.url(path), body) for n, (path, body) in enumerate(pictures.items())]
        snapshot = write_snapshot(str(tmp_path / "snapshot"), rows)
        nights = [night(tmp_path, snapshot, d) for d in ("2030-02-01", "2030-02-02")]
    down = [nights[1][f"cc3m:{n}"] for n in range(6)]
    assert {(r["status"], r["failure"]) for r in down} == {(verdicts.UNREACHABLE, verdicts.NO_HOST)}, [
        r["reason"] for r in down
    ]
    assert all("host outage" in r["reason"] and "6 of its 8 URLs" in r["reason"] for r in down)
    assert {nights[1][f"cc3m:{n}"]["status"] for n in (6, 7)} == {verdicts.ALIVE}
    [outage] = json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())["host_outages"]
    assert (outage["host"], outage["urls"], outage["urls_checked"]) == ("127.0.0.1", 6, 8)


def test_a_404_to_most_urls_of_a_host_is_an_outage_but_to_a_few_it_is_gone(tmp_path):
    """Host A answers 404 to all its 8 URLs two nights running (a deploy that broke every path):
    an outage of the host (--host-dead-after), not 8 URLs gone. Before, all 8 live URLs were dead on
    the second night. Host B answers 404 to 3 of its 8 URLs: evidence about each, dead."""
    with SampleWebServer(host="127.0.0.1") as host_a, SampleWebServer(host="127.0.0.2") as host_b:
        rows = []
        for n in range(8):
            rows.append((f"cc3m:{n}", host_a.url(f"/a/{n}.jpg"), jpeg(70 + n)))  # no route: 404
            body = jpeg(80 + n)
            if n >= 3:
                host_b.routes[f"/b/{n}.jpg"] = Reply(200, body, JPEG)
            rows.append((f"cc3m:{10 + n}", host_b.url(f"/b/{n}.jpg"), body))
        snapshot = write_snapshot(str(tmp_path / "snapshot"), rows)
        nights = [
            night(tmp_path, snapshot, d, **{"allow-network": "127.0.0.0/30"}) for d in ("2030-02-01", "2030-02-02")
        ]
    down = [nights[1][f"cc3m:{n}"] for n in range(8)]
    assert {(r["status"], r["failure"]) for r in down} == {(verdicts.UNREACHABLE, verdicts.NO_HOST)}, [
        r["reason"] for r in down
    ]
    assert all("host outage" in r["reason"] and "8 of its 8 URLs" in r["reason"] for r in down)
    assert [nights[1][f"cc3m:{10 + n}"]["status"] for n in range(8)] == [verdicts.DEAD] * 3 + [verdicts.ALIVE] * 5
    [outage] = json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())["host_outages"]
    assert (outage["host"], outage["urls"], outage["urls_checked"]) == ("127.0.0.1", 8, 8)


def test_a_soft_404_page_on_a_few_urls_of_a_host_is_still_gone(tmp_path):
    pictures = {f"/p/{n}.jpg": jpeg(40 + n) for n in range(8)}
    with SampleWebServer() as web:
        # 4 URLs (under the 5 an outage needs) get the same page: evidence about each URL
        for n, path in enumerate(pictures):
            page = n < 4
            web.routes[path] = (
                Reply(200, MAINTENANCE, {"Content-Type": "text/html"}) if page else Reply(200, pictures[path], JPEG)
            )
        rows = [(f"cc3m:{n}", web.url(path), body) for n, (path, body) in enumerate(pictures.items())]
        snapshot = write_snapshot(str(tmp_path / "snapshot"), rows)
        nights = [night(tmp_path, snapshot, d) for d in ("2030-02-01", "2030-02-02")]
    assert [nights[1][f"cc3m:{n}"]["status"] for n in range(8)] == [verdicts.DEAD] * 4 + [verdicts.ALIVE] * 4
    assert {nights[0][f"cc3m:{n}"]["failure"] for n in range(4)} == {verdicts.GONE}
    assert json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())["host_outages"] == []
