"""Refresh: the verdict rules alone, the Beam parts alone, and simulated nights end to end."""

import dataclasses
import datetime
import glob
import hashlib
import json
import os
import shutil
import socket
from unittest import mock

import aiohttp.resolver
import apache_beam as beam
import pyarrow.dataset as ds
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipelines import ingest
from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, jpeg, picture, placeholder_png
from tests.conftest import TESTS_TODAY, local_options
from transforms import schema
from transforms.errors import BooksUnbalanced
from transforms.fetch import address_policy
from transforms.fetch.client import FetchConfig, Fetcher, FetchResult
from transforms.image_checks import inspect_image
from transforms.liveness import checks, plans, summary, verdicts
from transforms.liveness import history as liveness_history

JPEG = {"Content-Type": "image/jpeg"}
NIGHT = datetime.date(2030, 3, 1)
# Most rule tests look at one night's evidence: dead at the first 'gone' answer. The defaults (more
# nights) have their own tests below.
PARAMS = verdicts.RefreshParams(night=NIGHT, dead_after=1, host_dead_after=1)
UTC = datetime.timezone.utc


def blank_gif():
    return encode(Image.new("RGB", (1, 1), (255, 255, 255)), "GIF")


def picture_of(body):
    return hashlib.sha256(body).hexdigest(), inspect_image(body).phash


def entry(key="cc3m:1", url="http://example.com/a.jpg", status=schema.OK, body=None, **fields):
    sha256, phash = (
        picture_of(body if body is not None else jpeg(1)) if status in verdicts.BASELINE_STATUSES else (None, None)
    )
    row = dict(
        key=key,
        dataset=key.split(":")[0],
        url=url,
        status=status,
        sha256=sha256,
        phash=phash,
        fetched_at=datetime.datetime(2030, 1, 1, tzinfo=UTC),
    )
    row.update(fields)
    return verdicts.snapshot_entry(row, "snap")


def got(body, http_status=200, final_url="http://example.com/a.jpg", method=verdicts.GET, **fields):
    """A check that downloaded `body`."""
    check = plans.new_check({"method": method})
    check.update(status=schema.OK, http_status=http_status, final_url=final_url, requests=1)
    image = inspect_image(body)
    check.update(
        sha256=hashlib.sha256(body).hexdigest(), phash=image.phash, image_status=image.status, image_error=image.error
    )
    check.update(fields)
    return check


def failed(status, http_status=None, **fields):
    check = plans.new_check({"method": verdicts.HEAD})
    check.update(status=status, http_status=http_status, error=f"{status} {http_status}", requests=1)
    check.update(fields)
    return check


def judge(snapshot_entry, check, previous=None, detected=None, params=PARAMS):
    return verdicts.judge(snapshot_entry, check, previous, detected or {}, params)


# ---- verdict rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, http_status, name_gone, kind",
    [
        (schema.HTTP_ERROR, 404, False, verdicts.GONE),
        (schema.HTTP_ERROR, 410, False, verdicts.GONE),
        (schema.HTTP_ERROR, 451, False, verdicts.GONE),
        (schema.HTTP_ERROR, 500, False, verdicts.TRANSIENT),
        (schema.HTTP_ERROR, 503, False, verdicts.TRANSIENT),
        (schema.HTTP_ERROR, 403, False, verdicts.TRANSIENT),
        (schema.HTTP_ERROR, 429, False, verdicts.TRANSIENT),
        (schema.TIMEOUT, None, False, verdicts.TRANSIENT),
        (schema.CONNECTION_ERROR, None, False, verdicts.TRANSIENT),
        (schema.CONNECTION_ERROR, None, True, verdicts.NO_HOST),
        (schema.BLOCKED, None, False, verdicts.GONE),
        (schema.OPTED_OUT, 200, False, verdicts.GONE),
        (schema.TOO_LARGE, 200, False, verdicts.TRANSIENT),
    ],
)
def test_failures_are_gone_or_transient(status, http_status, name_gone, kind):
    assert verdicts.classify_failure(status, http_status, name_gone) == kind


def test_same_bytes_are_alive_and_unchanged():
    row = judge(entry(body=jpeg(1)), got(jpeg(1)))
    assert (row["status"], row["bytes_changed"], row["phash_distance"]) == (verdicts.ALIVE, False, 0)
    assert row["error"] is None and row["failure"] is None and row["consecutive_failures"] == 0


def test_recompressed_picture_is_alive_with_bytes_changed():
    smaller = encode(picture(1).resize((160, 120)), "JPEG", quality=55)
    row = judge(entry(body=jpeg(1)), got(smaller))
    assert row["status"] == verdicts.ALIVE and row["bytes_changed"] is True
    assert row["phash_distance"] <= verdicts.DEFAULT_MAX_DISTANCE
    assert row["sha256"] == hashlib.sha256(smaller).hexdigest() != row["ingest_sha256"]


def test_another_picture_is_changed_and_the_threshold_decides():
    row = judge(entry(body=jpeg(1)), got(jpeg(2)))
    assert row["status"] == verdicts.CHANGED and row["phash_distance"] > verdicts.DEFAULT_MAX_DISTANCE
    lenient = verdicts.RefreshParams(night=NIGHT, max_distance=64)
    assert judge(entry(body=jpeg(1)), got(jpeg(2)), params=lenient)["status"] == verdicts.ALIVE


def test_not_modified_is_alive_with_the_snapshot_hashes():
    snap = entry(body=jpeg(1), etag='"v1"')
    plan = plans.plan_check(snap["url"], [snap], PARAMS)
    check = plans.finish_check(plan, [("GET", FetchResult(schema.OK, http_status=304, attempts=1))])
    row = judge(snap, check)
    assert (row["status"], row["method"], row["http_status"]) == (verdicts.ALIVE, verdicts.CONDITIONAL, 304)
    assert (row["sha256"], row["phash"]) == (snap["sha256"], snap["phash"]) and row["bytes_changed"] is False


def test_a_304_nobody_asked_for_proves_nothing():
    snap = entry(body=jpeg(1))
    plan = plans.plan_check(snap["url"], [snap], PARAMS)
    check = plans.finish_check(
        plan,
        [
            ("HEAD", FetchResult(schema.OK, http_status=200, attempts=1)),
            ("GET", FetchResult(schema.OK, http_status=304, attempts=1)),
        ],
    )
    assert judge(snap, check)["status"] == verdicts.UNREACHABLE


@pytest.mark.parametrize(
    "body, final_url, detected, extra, expect",
    [
        (blank_gif(), None, {}, {}, "blank"),
        (jpeg(5), "https://s.yimg.com/pw/images/en-us/photo_unavailable.png", {}, {}, "Flickr"),
        (jpeg(5), "https://i.imgur.com/removed.png", {}, {}, "Imgur"),
        (jpeg(5), "http://example.com/static/no-image.png", {}, {}, "named like a placeholder"),
        (placeholder_png(), None, {}, {}, "bundled sample"),
        (jpeg(5), None, {hashlib.sha256(jpeg(5)).hexdigest(): 3}, {}, "replaced 3 different"),
        (
            jpeg(5),
            None,
            {},
            {"placeholder_sha256": frozenset([hashlib.sha256(jpeg(5)).hexdigest()])},
            "known placeholder",
        ),
    ],
)
def test_placeholders_are_dead(body, final_url, detected, extra, expect):
    params = dataclasses.replace(PARAMS, **extra)
    row = judge(
        entry(body=jpeg(1)), got(body, final_url=final_url or "http://example.com/a.jpg"), None, detected, params
    )
    assert row["status"] == verdicts.DEAD and row["placeholder"] is True and row["failure"] == verdicts.GONE
    assert expect in row["error"]


def test_a_photo_url_named_like_a_placeholder_is_not_one_unless_redirected_there():
    url = "http://example.com/placeholder-kittens.jpg"
    assert judge(entry(url=url, body=jpeg(1)), got(jpeg(1), final_url=url))["status"] == verdicts.ALIVE


@pytest.mark.parametrize(
    "url, final_url, placeholder",
    [
        ("http://example.com/a.jpg", "http://example.com/static/no-image.png", True),
        ("http://example.com/a.jpg", "http://example.com/img/photo_unavailable.png", True),
        ("http://example.com/a.jpg", "http://example.com/img/default-placeholder.jpg", True),
        # the photo's own file name elsewhere: http -> https, a CDN host
        ("http://example.com/no-image.png", "https://cdn.example.com/no-image.png", False),
        # a slug with the word inside another word
        ("http://example.com/p/1", "http://example.com/p/1/piano-image.jpg", False),
        ("http://example.com/p/2", "http://example.com/p/2/casino_photo.jpg", False),
    ],
)
def test_a_redirect_is_a_placeholder_by_its_file_name_only_when_named_so(url, final_url, placeholder):
    assert (verdicts.known_url_placeholder(final_url, url) is not None) is placeholder


def test_the_known_list_holds_the_bundled_samples_placeholder():
    assert inspect_image(placeholder_png()).phash in {p.phash for p in verdicts.KNOWN_PLACEHOLDERS}


def test_a_placeholder_that_was_already_the_snapshot_picture_is_dead_too():
    snap = entry(body=jpeg(6))
    assert judge(snap, got(jpeg(6)))["status"] == verdicts.ALIVE
    assert judge(snap, got(jpeg(6)), None, {snap["sha256"]: 5})["status"] == verdicts.DEAD


def test_a_picture_the_snapshot_marked_a_placeholder_stays_dead():
    snap = entry(body=jpeg(6), is_placeholder=True)
    row = judge(snap, got(jpeg(6)))
    assert row["status"] == verdicts.DEAD and row["placeholder"] and "is_placeholder" in row["error"]
    assert judge(snap, got(jpeg(7)))["status"] == verdicts.CHANGED  # the URL now has a real picture


def test_snapshots_written_before_a_column_existed_are_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_schema = pa.schema([f for f in schema.IMAGE_SCHEMA if f.name not in ("is_placeholder", "etag")])
    sha256, phash = picture_of(jpeg(1))
    record = dict(dataset="cc3m", key="cc3m:1", url="http://h/a.jpg", status=schema.OK, sha256=sha256, phash=phash)
    pq.write_table(pa.Table.from_pylist([record], old_schema), tmp_path / "part-0.parquet")
    pattern = str(tmp_path / "*.parquet")
    columns = checks.snapshot_columns(pattern)
    assert "etag" not in columns and "is_placeholder" not in columns and "last_modified" in columns
    with BeamPipeline(runner="FnApiRunner") as p:
        entries = (p | checks.ReadSnapshots([("old", pattern)]))["entries"]
        assert_that(
            entries | beam.Map(lambda e: (e["key"], e["etag"], e["is_placeholder"], e["sha256"])),
            equal_to([("cc3m:1", None, False, sha256)]),
        )
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not an ingest"):
        checks.snapshot_columns(str(tmp_path / "other.parquet"))


def test_soft_404_and_unreadable_pictures():
    page = got(b"<html>Sorry, this photo was removed</html>", content_type="text/html")
    row = judge(entry(), page)
    assert row["status"] == verdicts.DEAD and "soft 404" in row["error"] and "text/html" in row["error"]
    truncated = got(jpeg(1, (600, 400))[:3000])
    assert judge(entry(), truncated)["status"] == verdicts.UNREACHABLE
    # an empty 200 (a cache or origin in a bad state) says nothing: no page saying "not found"
    for content_type in (None, "text/html", "image/jpeg"):
        empty = judge(entry(), got(b"", content_type=content_type))
        assert (empty["status"], empty["failure"]) == (verdicts.UNREACHABLE, verdicts.TRANSIENT), empty["reason"]


def test_rows_invalid_or_blocked_at_ingest_are_dead_without_a_request():
    for status in (schema.INVALID_URL, schema.BLOCKED):
        snap = entry(url="ftp://x/y.jpg", status=status, error="nope")
        plan = plans.plan_check(snap["url"], [snap], PARAMS)
        assert plan["method"] == verdicts.NOT_CHECKED
        row = judge(snap, plans.new_check(plan), None, None, verdicts.RefreshParams(night=NIGHT, dead_after=5))
        assert row["status"] == verdicts.DEAD and row["method"] == "none" and row["requests"] == 0
        assert row["failure"] == verdicts.UNFETCHABLE and f"{status} at ingest (nope)" in row["error"]


def test_rows_that_failed_at_ingest_are_rechecked_and_can_revive():
    snap = entry(status=schema.HTTP_ERROR, http_status=404)
    assert plans.plan_check(snap["url"], [snap], PARAMS)["method"] == verdicts.HEAD
    row = judge(snap, got(jpeg(3)))
    assert row["status"] == verdicts.ALIVE and row["revived"] is True and row["bytes_changed"] is None
    still = judge(snap, failed(schema.HTTP_ERROR, 404))
    assert still["status"] == verdicts.DEAD and still["newly_dead"] is False  # dead at ingest already
    timed_out = entry(status=schema.TIMEOUT)
    assert judge(timed_out, got(jpeg(3)))["revived"] is False  # it was never declared dead


def test_dead_needs_dead_after_failed_nights_in_a_row():
    params = verdicts.RefreshParams(night=NIGHT, dead_after=3, unreachable_dead_after=5)
    snap = entry()
    previous = None
    seen = []
    for night, check in enumerate(
        [
            failed(schema.HTTP_ERROR, 500),
            failed(schema.HTTP_ERROR, 404),
            failed(schema.HTTP_ERROR, 404),
            failed(schema.HTTP_ERROR, 404),
        ]
    ):
        params = dataclasses.replace(params, night=NIGHT + datetime.timedelta(days=night))
        row = judge(snap, check, previous, None, params)
        seen.append((row["status"], row["consecutive_failures"], row["newly_dead"]))
        previous = row
    # a 500 then 404s: the streak counts every failed night, the verdict waits for 3 'gone' answers
    assert seen == [
        (verdicts.UNREACHABLE, 1, False),
        (verdicts.UNREACHABLE, 2, False),
        (verdicts.UNREACHABLE, 3, False),
        (verdicts.DEAD, 4, True),
    ]
    assert previous["dead_since"] == NIGHT + datetime.timedelta(days=3) and previous["gone_failures"] == 3
    assert "dead after 3" in judge(snap, failed(schema.HTTP_ERROR, 404), None, None, params)["error"]


def test_long_unreachable_streaks_become_dead_and_revivals_are_noticed():
    params = verdicts.RefreshParams(night=NIGHT, unreachable_dead_after=3)
    snap = entry()
    previous = {"status": verdicts.UNREACHABLE, "consecutive_failures": 2, "previous_nights": 2}
    row = judge(snap, failed(schema.TIMEOUT), previous, None, params)
    assert row["status"] == verdicts.DEAD and row["newly_dead"] and row["previous_nights"] == 3
    back = judge(snap, got(jpeg(1)), row, None, params)
    assert back["status"] == verdicts.ALIVE and back["revived"] and back["consecutive_failures"] == 0
    assert back["previous_status"] == verdicts.DEAD and back["dead_since"] is None
    # once dead, any failure keeps it dead (a 5xx does not make a dead URL merely unreachable)
    dead = {"status": verdicts.DEAD, "consecutive_failures": 4, "previous_nights": 4, "dead_since": NIGHT}
    still = judge(snap, failed(schema.HTTP_ERROR, 503), dead, None, params)
    assert (still["status"], still["newly_dead"], still["dead_since"]) == (verdicts.DEAD, False, NIGHT)
    never = verdicts.RefreshParams(night=NIGHT, unreachable_dead_after=0)
    previous = {"status": verdicts.UNREACHABLE, "consecutive_failures": 400, "previous_nights": 400}
    assert judge(snap, failed(schema.TIMEOUT), previous, None, never)["status"] == verdicts.UNREACHABLE


def test_plans_are_cheap_first():
    with_etag = entry(etag='"a"', last_modified="Wed, 01 Jan 2030 00:00:00 GMT")
    plan = plans.plan_check(with_etag["url"], [with_etag], PARAMS)
    assert plan["method"] == verdicts.CONDITIONAL
    assert plan["headers"] == {"If-None-Match": '"a"', "If-Modified-Since": "Wed, 01 Jan 2030 00:00:00 GMT"}
    bare = entry()
    assert plans.plan_check(bare["url"], [bare], PARAMS)["method"] == verdicts.HEAD
    no_head = verdicts.RefreshParams(night=NIGHT, head_first=False)
    assert plans.plan_check(bare["url"], [bare], no_head)["method"] == verdicts.GET
    # two keys of one URL recorded different pictures: no validator can vouch for both
    other = entry(key="cc12m:1", body=jpeg(2), etag='"b"')
    assert plans.plan_check(bare["url"], [with_etag, other], PARAMS)["method"] == verdicts.HEAD
    image_file = entry(url="/data/train/n01/x.JPEG", size_bytes=1234)
    assert plans.plan_check(image_file["url"], [image_file], PARAMS)["method"] == verdicts.FILE


@pytest.mark.parametrize(
    "result, settles",
    [
        (FetchResult(schema.OK, http_status=200), False),
        (FetchResult(schema.HTTP_ERROR, http_status=405), False),
        (FetchResult(schema.HTTP_ERROR, http_status=501), False),
        (FetchResult(schema.HTTP_ERROR, http_status=403), False),
        (FetchResult(schema.HTTP_ERROR, http_status=404), False),  # evidence: the GET confirms it
        (FetchResult(schema.HTTP_ERROR, http_status=410), False),
        (FetchResult(schema.HTTP_ERROR, http_status=429), True),
        (FetchResult(schema.HTTP_ERROR, http_status=503), True),
        (FetchResult(schema.HTTP_ERROR, http_status=500), False),  # a handler failing on HEAD: GET tells
        (FetchResult(schema.TIMEOUT), False),  # a HEAD never answered: the GET may be served
        (FetchResult(schema.TIMEOUT, unconnectable=True), True),  # no connection in time: the host
        (FetchResult(schema.TIMEOUT, skipped=True), True),
        (FetchResult(schema.OPTED_OUT, http_status=200), True),
        (FetchResult(schema.CONNECTION_ERROR), False),  # hung up on the HEAD: the GET may be served
        (FetchResult(schema.CONNECTION_ERROR, unconnectable=True), True),
        (FetchResult(schema.CONNECTION_ERROR, unconnectable=True, refused=True), True),
        (FetchResult(schema.CONNECTION_ERROR, unconnectable=True, name_not_found=True), True),
        (FetchResult(schema.CONNECTION_ERROR, skipped=True), True),  # the host is short-circuited
    ],
)
def test_head_settles_only_failures_that_are_no_evidence(result, settles):
    assert plans.head_settles(result) is settles


@pytest.mark.parametrize(
    "code, settles",
    [
        (200, True),
        (304, True),
        (404, True),
        (410, True),
        (429, True),
        (503, True),
        (412, False),
        (400, False),
        (403, False),
    ],
)
def test_a_conditional_request_turned_down_is_followed_by_a_plain_get(code, settles):
    status = schema.OK if code in (200, 304) else schema.HTTP_ERROR
    assert plans.conditional_settles(FetchResult(status, http_status=code)) is settles


def test_a_304_to_the_plain_get_after_a_turned_down_conditional_vouches_for_nothing():
    snap = entry(etag='"a"')
    plan = plans.plan_check(snap["url"], [snap], PARAMS)
    steps = [
        ("GET", FetchResult(schema.HTTP_ERROR, "HTTP 412", 412, attempts=1)),
        ("GET", FetchResult(schema.OK, http_status=304, attempts=1)),
    ]
    check = plans.finish_check(plan, steps)
    assert (check["method"], check["requests"], check["not_modified"]) == (verdicts.CONDITIONAL, 2, False)
    assert judge(snap, check)["status"] == verdicts.UNREACHABLE


def test_placeholder_votes_come_only_from_urls_whose_picture_was_replaced():
    replaced = got(placeholder_png(), final_url="http://example.com/gone.png")
    snap = entry(body=jpeg(1))
    assert verdicts.placeholder_votes([snap], replaced, PARAMS) == [(replaced["sha256"], snap["sha256"], True)]
    in_place = got(placeholder_png())
    assert verdicts.placeholder_votes([snap], in_place, PARAMS) == [(in_place["sha256"], snap["sha256"], False)]
    assert verdicts.placeholder_votes([entry(body=placeholder_png())], replaced, PARAMS) == []
    assert verdicts.placeholder_votes([entry(status=schema.HTTP_ERROR)], replaced, PARAMS) == []
    assert verdicts.placeholder_votes([entry()], failed(schema.HTTP_ERROR, 404), PARAMS) == []


def test_a_key_in_several_snapshots_keeps_its_best_row():
    old = entry(fetched_at=datetime.datetime(2029, 1, 1, tzinfo=UTC), body=jpeg(1))
    new = entry(fetched_at=datetime.datetime(2030, 1, 1, tzinfo=UTC), body=jpeg(2))
    failed_later = entry(status=schema.TIMEOUT, fetched_at=datetime.datetime(2031, 1, 1, tzinfo=UTC))
    assert verdicts.best_entry([old, failed_later, new]) is new


def test_link_rot_per_month():
    fetched = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    months = summary.months_between(fetched, datetime.date(2030, 3, 1))
    assert months == pytest.approx(60 / summary.DAYS_PER_MONTH)
    rot = summary.link_rot(100, 6, 100 * months)
    assert rot["dead_fraction"] == 0.06 and rot["per_month"] == pytest.approx(0.06 / months, rel=1e-4)
    assert summary.link_rot(10, 1, 10 * 0.001)["per_month"] is None  # under a day since ingest
    assert summary.link_rot(0, 0, 0.0)["per_month"] is None


def test_option_values_are_checked(tmp_path):
    assert verdicts.parse_placeholder("AB" * 32) == ("sha256", "ab" * 32)
    assert verdicts.parse_placeholder("8000000000000000") == ("phash", "8000000000000000")
    with pytest.raises(ValueError):
        verdicts.parse_placeholder("xyz")
    with pytest.raises(ValueError):
        verdicts.parse_night("01/02/2030")
    assert verdicts.parse_night("2030-02-01") == datetime.date(2030, 2, 1)
    today = datetime.date(2030, 3, 1)
    assert verdicts.parse_night("2030-03-02", today) == datetime.date(2030, 3, 2)  # tomorrow: a schedule east of UTC
    assert verdicts.parse_night(None, today) == today
    with pytest.raises(ValueError, match=r"--night 2030-03-03 is more than a day after today \(2030-03-01, UTC\)"):
        verdicts.parse_night("2030-03-03", today)
    assert refresh_job.snapshot_pattern("gs://b/out/") == ("gs://b/out", "gs://b/out/images/*.parquet")
    assert refresh_job.snapshot_pattern("gs://b/out/images/*.parquet") == (
        "gs://b/out/images",
        "gs://b/out/images/*.parquet",
    )
    snap = tmp_path / "snap"
    (snap / "images").mkdir(parents=True)
    (snap / "images" / "part-0.parquet").write_bytes(b"")
    for output, message in ((snap / "refresh", "overlaps the snapshot"), (tmp_path, "overlaps the snapshot")):
        with pytest.raises(ValueError, match=message):
            refresh_job.run(local_options(snapshot=snap, output=output))
    with pytest.raises(ValueError, match="no Parquet files"):
        refresh_job.run(local_options(snapshot=tmp_path / "nothing", output=tmp_path / "r"))
    assert refresh_job.main(["--snapshot", str(snap)]) == 2


def test_dns_name_gone_is_told_apart_from_a_failed_lookup():
    class Resolver:
        async def resolve(self, host, port=0, family=socket.AF_INET):
            if host == "gone.test":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

        async def close(self):
            pass

    with mock.patch.object(address_policy, "ThreadedResolver", Resolver):
        fetcher = Fetcher(FetchConfig(timeout=2.0, retries=0))
        try:
            gone = fetcher.submit("http://gone.test/a.jpg").result(timeout=10)
            flaky = fetcher.submit("http://flaky.test/a.jpg").result(timeout=10)
        finally:
            fetcher.close()
    assert gone.status == flaky.status == schema.CONNECTION_ERROR
    assert gone.name_not_found and not flaky.name_not_found
    assert verdicts.classify_failure(gone.status, None, gone.name_not_found) == verdicts.NO_HOST
    assert verdicts.classify_failure(flaky.status, None, flaky.name_not_found) == verdicts.TRANSIENT


# ---- Beam parts alone --------------------------------------------------------------------------------


def test_check_urls_makes_one_cheap_request_per_distinct_url(web):
    body = jpeg(4)
    web.routes["/etag.jpg"] = lambda method, headers, n: (
        Reply(304, b"", {"ETag": '"x"'}) if headers.get("If-None-Match") == '"x"' else Reply(200, body, JPEG)
    )
    web.routes["/plain.jpg"] = Reply(200, body, JPEG)
    web.routes["/no-head.jpg"] = lambda method, headers, n: Reply(405) if method == "HEAD" else Reply(200, body, JPEG)
    entries = [
        entry("cc3m:1", web.url("/etag.jpg"), body=body, etag='"x"'),
        entry("cc12m:1", web.url("/etag.jpg"), body=body, etag='"x"'),
        entry("cc3m:2", web.url("/plain.jpg"), body=body),
        entry("cc12m:2", web.url("/plain.jpg"), body=body),
        entry("cc3m:3", web.url("/no-head.jpg"), body=body),
        entry("cc3m:4", web.url("/missing.jpg"), body=body),
    ]
    config = FetchConfig(allow_networks=("127.0.0.1/32",), timeout=5.0, retries=0)
    with BeamPipeline(runner="FnApiRunner") as p:
        checked = p | beam.Create(entries) | checks.CheckUrls(config, PARAMS)
        summary = checked | beam.Map(
            lambda item: (
                item["url"].rsplit("/", 1)[-1],
                sorted(e["key"] for e in item["entries"]),
                item["check"]["method"],
                item["check"]["http_status"],
                item["check"]["sha256"],
            )
        )
        sha = hashlib.sha256(body).hexdigest()
        assert_that(
            summary,
            equal_to(
                [
                    ("etag.jpg", ["cc12m:1", "cc3m:1"], verdicts.CONDITIONAL, 304, None),
                    ("plain.jpg", ["cc12m:2", "cc3m:2"], verdicts.HEAD_GET, 200, sha),
                    ("no-head.jpg", ["cc3m:3"], verdicts.HEAD_GET, 200, sha),
                    ("missing.jpg", ["cc3m:4"], verdicts.HEAD_GET, 404, None),
                ]
            ),
        )
    assert web.hits == {"/etag.jpg": 1, "/plain.jpg": 2, "/no-head.jpg": 2, "/missing.jpg": 2}
    conditional = [h for (m, path, h, _t) in web.requests if path == "/etag.jpg"]
    assert conditional[0].get("If-None-Match") == '"x"'


def test_find_placeholders_counts_replaced_pictures_behind_redirects():
    banner, update, in_place = jpeg(50), jpeg(51), jpeg(52)

    def replaced(key, url, before, now, final_url):
        return {"entries": [entry(key, url, body=before)], "check": got(now, final_url=final_url)}

    # three different pictures, each URL redirected to one banner: a placeholder
    checked = [replaced(f"cc3m:{n}", f"http://h/{n}.jpg", jpeg(n), banner, "http://h/banner.jpg") for n in range(3)]
    # three mirrors of one photo, all redirected to the same new version: a change, not a placeholder
    checked += [replaced(f"cc12m:{n}", f"http://m{n}/p.jpg", jpeg(7), update, "http://m/new.jpg") for n in range(3)]
    # four different pictures replaced in place by one picture: listed as frequent, not a placeholder
    checked += [
        replaced(f"zero:{n}", f"http://z/{n}.jpg", jpeg(10 + n), in_place, f"http://z/{n}.jpg") for n in range(4)
    ]
    sha = lambda body: hashlib.sha256(body).hexdigest()  # noqa: E731
    with BeamPipeline(runner="FnApiRunner") as p:
        found = p | beam.Create(checked) | checks.FindPlaceholders(PARAMS)
        assert_that(found["placeholders"], equal_to([(sha(banner), 3)]), label="placeholders")
        assert_that(found["frequent"], equal_to([[(sha(in_place), 4), (sha(banner), 3)]]), label="frequent")


def history_row(key, night, status, failures=0):
    return dict(
        key=key,
        night=night,
        status=status,
        consecutive_failures=failures,
        previous_nights=0,
        dead_since=night if status == verdicts.DEAD else None,
        dataset="cc3m",
        url=f"http://h/{key}",
    )


def test_history_is_one_directory_per_night_and_only_complete_nights_are_read(tmp_path):
    history = str(tmp_path / "history")
    nights = [datetime.date(2030, 1, d) for d in (1, 2, 3)]
    for night, status in zip(nights, (verdicts.ALIVE, verdicts.UNREACHABLE, verdicts.DEAD), strict=False):
        with BeamPipeline(runner="FnApiRunner") as p:
            _ = (
                p
                | beam.Create([history_row("cc3m:1", night, status), history_row("cc3m:2", night, verdicts.ALIVE)])
                | liveness_history.WriteHistory(history, night)
            )
    assert liveness_history.complete_nights(history) == nights
    assert json.load(open(os.path.join(history, "2030-01-02", "_COMPLETE")))["rows"] == 2
    assert liveness_history.previous_night(history, datetime.date(2030, 1, 3)) == nights[1]  # a re-run of the 3rd
    assert liveness_history.previous_night(history, datetime.date(2030, 1, 1)) is None
    os.remove(os.path.join(history, "2030-01-03", "_COMPLETE"))  # a night whose write did not finish
    assert liveness_history.previous_night(history, datetime.date(2030, 1, 9)) == nights[1]
    with BeamPipeline(runner="FnApiRunner") as p:
        rows = p | liveness_history.ReadHistory(history, datetime.date(2030, 1, 9))
        assert_that(
            rows | beam.MapTuple(lambda key, row: (key, row["status"], row["night"])),
            equal_to([("cc3m:1", verdicts.UNREACHABLE, nights[1]), ("cc3m:2", verdicts.ALIVE, nights[1])]),
        )
    # a night written again replaces its files: the marker lists only the new ones, the old are gone
    before = sorted(os.listdir(os.path.join(history, "2030-01-02")))
    with BeamPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create([history_row("cc3m:1", nights[1], verdicts.DEAD)])
            | liveness_history.WriteHistory(history, nights[1])
        )
    after = sorted(os.listdir(os.path.join(history, "2030-01-02")))
    marker = json.load(open(os.path.join(history, "2030-01-02", "_COMPLETE")))
    assert after == ["_COMPLETE", *marker["files"]] and not set(after) & (set(before) - {"_COMPLETE"})
    assert marker["rows"] == 1 and liveness_history.complete_nights(history) == nights[:2]


# ---- end to end: ingest, change the web, three nights ----------------------------------------------------


class NoLocalhost:
    """The resolver after 'localhost' lost its DNS record: the name no longer exists."""

    def __init__(self):
        self._real = aiohttp.resolver.ThreadedResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host == "localhost":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await self._real.resolve(host, port, family)

    async def close(self):
        pass


def install_ingest_web(web):
    """What the web served at ingest: every route an image."""
    images = {
        name: jpeg(seed)
        for seed, name in enumerate(
            [
                "etag",
                "plain",
                "dead",
                "gone",
                "down",
                "slow",
                "replaced",
                "replaced-etag",
                "recompressed",
                "a",
                "b",
                "c",
                "head-refused",
                "blank",
                "soft404",
                "dns",
                "d",
                "direct",
            ]
        )
    }
    for name, body in images.items():
        headers = dict(JPEG)
        if name in ("etag", "replaced-etag"):
            headers["ETag"] = f'"{name}-v1"'
        path = f"/flickr/{name}.jpg" if name in ("a", "b", "c", "d") else f"/{name}.jpg"
        web.routes[path] = Reply(200, body, headers)
    web.routes["/was-404.jpg"] = Reply(404, b"no", {"Content-Type": "text/plain"})
    return images


def change_the_web(web, images):
    """The web the nights see (EXPECTED below): dead, gone, down, replaced, recompressed, placeholder..."""
    etag_body = images["etag"]
    web.routes["/etag.jpg"] = lambda method, headers, n: (
        Reply(304, b"", {"ETag": '"etag-v1"'})
        if headers.get("If-None-Match") == '"etag-v1"'
        else Reply(200, etag_body, dict(JPEG, ETag='"etag-v1"'))
    )
    web.routes["/dead.jpg"] = Reply(404, b"not found", {"Content-Type": "text/plain"})
    web.routes["/gone.jpg"] = Reply(410, b"gone", {"Content-Type": "text/plain"})
    web.routes["/down.jpg"] = Reply(500, b"oops", {"Content-Type": "text/plain"})
    web.routes["/slow.jpg"] = Reply(200, images["slow"], JPEG, delay=1.6)
    web.routes["/replaced.jpg"] = Reply(200, jpeg(40), JPEG)
    web.routes["/replaced-etag.jpg"] = Reply(200, jpeg(41), dict(JPEG, ETag='"replaced-etag-v2"'))
    web.routes["/recompressed.jpg"] = Reply(200, encode(picture(8).resize((200, 150)), "JPEG", quality=60), JPEG)
    # a, b, c: one banner replaced three different pictures (the many-URLs rule; nothing known about it)
    web.routes["/static/banner.jpg"] = Reply(200, jpeg(43), JPEG)
    for name in "abc":
        web.routes[f"/flickr/{name}.jpg"] = Reply(302, b"", {"Location": "/static/banner.jpg"})
    # d: a redirect to a file named like a placeholder; direct: the known placeholder served in place
    web.routes["/flickr/d.jpg"] = Reply(302, b"", {"Location": "/pw/photo_unavailable.png"})
    web.routes["/pw/photo_unavailable.png"] = Reply(200, jpeg(44), JPEG)
    web.routes["/direct.jpg"] = Reply(200, placeholder_png(), {"Content-Type": "image/png"})
    head_refused = images["head-refused"]
    web.routes["/head-refused.jpg"] = lambda method, headers, n: (
        Reply(405, b"", {"Allow": "GET"}) if method == "HEAD" else Reply(200, head_refused, JPEG)
    )
    web.routes["/blank.jpg"] = Reply(200, blank_gif(), {"Content-Type": "image/gif"})
    web.routes["/soft404.jpg"] = Reply(200, b"<html>This photo was removed</html>", {"Content-Type": "text/html"})
    web.routes["/was-404.jpg"] = Reply(200, jpeg(42), JPEG)


def write_manifests(tmp_path, web):
    b = web.base
    paths = [
        "/etag.jpg",
        "/plain.jpg",
        "/dead.jpg",
        "/gone.jpg",
        "/down.jpg",
        "/slow.jpg",
        "/replaced.jpg",
        "/replaced-etag.jpg",
        "/recompressed.jpg",
        "/flickr/a.jpg",
        "/flickr/b.jpg",
        "/flickr/c.jpg",
        "/head-refused.jpg",
        "/blank.jpg",
        "/soft404.jpg",
        "/was-404.jpg",
    ]
    urls = [b + p for p in paths] + [
        "ftp://example.com/x.jpg",
        f"http://localhost:{web.port}/dns.jpg",
        b + "/flickr/d.jpg",
        b + "/direct.jpg",
    ]
    (tmp_path / "cc3m.tsv").write_text("".join(f"caption {n}\t{u}\n" for n, u in enumerate(urls)))
    # the same URLs under other keys: one request per URL and night, a row per key
    (tmp_path / "cc12m.tsv").write_text(f"{b}/plain.jpg\tagain\n{b}/etag.jpg\tagain\n")
    return {f"cc3m:{n + 1}": u for n, u in enumerate(urls)}


# key -> (verdict, method) on the first night, dead after one 'gone' night (--dead-after 1 --host-dead-after 1)
EXPECTED = {
    "cc3m:1": (verdicts.ALIVE, verdicts.CONDITIONAL),
    "cc3m:2": (verdicts.ALIVE, verdicts.HEAD_GET),
    "cc3m:3": (verdicts.DEAD, verdicts.HEAD_GET),  # a 404/410 to HEAD is confirmed by the GET
    "cc3m:4": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:5": (verdicts.UNREACHABLE, verdicts.HEAD_GET),  # a 500 to HEAD: the GET tells (a 500 too)
    "cc3m:6": (verdicts.UNREACHABLE, verdicts.HEAD_GET),  # a HEAD that times out: the GET tells (slow too)
    "cc3m:7": (verdicts.CHANGED, verdicts.HEAD_GET),
    "cc3m:8": (verdicts.CHANGED, verdicts.CONDITIONAL),
    "cc3m:9": (verdicts.ALIVE, verdicts.HEAD_GET),
    "cc3m:10": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:11": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:12": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:13": (verdicts.ALIVE, verdicts.HEAD_GET),
    "cc3m:14": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:15": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:16": (verdicts.ALIVE, verdicts.HEAD_GET),
    "cc3m:17": (verdicts.DEAD, verdicts.NOT_CHECKED),
    "cc3m:18": (verdicts.DEAD, verdicts.HEAD),
    "cc3m:19": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc3m:20": (verdicts.DEAD, verdicts.HEAD_GET),
    "cc12m:1": (verdicts.ALIVE, verdicts.HEAD_GET),
    "cc12m:2": (verdicts.ALIVE, verdicts.CONDITIONAL),
}


def tree_digest(root):
    digest = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                digest[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digest


def read_status(out):
    rows = ds.dataset(os.path.join(out, "status"), format="parquet").to_table().to_pylist()
    return {row["key"]: row for row in rows}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Ingest against the loopback web, then change the web; yields a runner for refresh nights."""
    tmp_path = tmp_path_factory.mktemp("refresh")
    with SampleWebServer() as web:
        images = install_ingest_web(web)
        urls = write_manifests(tmp_path, web)
        snapshot = str(tmp_path / "snapshot")
        ingest.run(
            local_options(
                manifest=[f"cc3m={tmp_path / 'cc3m.tsv'}", f"cc12m={tmp_path / 'cc12m.tsv'}"],
                output=snapshot,
                # At ingest every route answers at once: the timeout only guards against a hang. At
                # 1 s a loaded machine timed a fetch out, and its key had no baseline on the night.
                **{"allow-network": "127.0.0.1/32", "timeout": 30.0},
            )
        )
        before = tree_digest(snapshot)
        change_the_web(web, images)

        def night(output, night=None, history=None, **extra):
            args = {
                "snapshot": snapshot,
                "output": str(tmp_path / output),
                "allow-network": "127.0.0.1/32",
                "timeout": 1.0,
                "retries": 0,
            }
            args.update({k: v for k, v in (("night", night), ("history", history)) if v})
            args.update(extra)
            web.hits.clear()
            with mock.patch.object(address_policy, "ThreadedResolver", NoLocalhost):
                refresh_job.run(local_options(**args))
            return str(tmp_path / output), dict(web.hits)

        yield {
            "web": web,
            "images": images,
            "urls": urls,
            "snapshot": snapshot,
            "before": before,
            "night": night,
            "tmp": tmp_path,
        }


def test_one_night_gives_each_url_its_verdict(world):
    out, hits = world["night"]("one-night", **{"dead-after": 1, "host-dead-after": 1})
    rows = read_status(out)
    assert {k: (r["status"], r["method"]) for k, r in rows.items()} == EXPECTED
    ingested = {r["key"]: r for r in ds.dataset(os.path.join(world["snapshot"], "images")).to_table().to_pylist()}
    assert ingested["cc3m:16"]["status"] == schema.HTTP_ERROR and ingested["cc3m:18"]["status"] == schema.OK
    assert rows["cc3m:1"]["http_status"] == 304 and rows["cc3m:1"]["sha256"] == ingested["cc3m:1"]["sha256"]
    assert rows["cc3m:9"]["bytes_changed"] is True and rows["cc3m:9"]["phash_distance"] <= 6
    assert rows["cc3m:2"]["bytes_changed"] is False
    assert all(rows[f"cc3m:{n}"]["placeholder"] for n in (10, 11, 12, 14, 19, 20))
    assert "replaced 3 different pictures" in rows["cc3m:10"]["error"] and "blank" in rows["cc3m:14"]["error"]
    assert "named like a placeholder" in rows["cc3m:19"]["error"] and "bundled" in rows["cc3m:20"]["error"]
    assert "soft 404" in rows["cc3m:15"]["error"] and "no such name" in rows["cc3m:18"]["error"]
    assert rows["cc3m:6"]["failure"] == verdicts.TRANSIENT and "timeout" in rows["cc3m:6"]["error"]
    assert rows["cc3m:16"]["revived"] and not rows["cc3m:3"]["revived"]
    assert rows["cc3m:3"]["newly_dead"] and not rows["cc3m:17"]["newly_dead"]  # invalid at ingest already
    assert {r["url"] for r in rows.values()} == set(world["urls"].values())
    # one request per distinct URL and night, however many keys list it; none for the ftp row
    assert hits["/plain.jpg"] == 2 and hits["/etag.jpg"] == 1 and hits["/dead.jpg"] == 2
    assert "/dns.jpg" not in hits
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["verdict_totals"] == {
        verdicts.ALIVE: 7,
        verdicts.CHANGED: 2,
        verdicts.UNREACHABLE: 2,
        verdicts.DEAD: 11,
    }
    assert summary["urls"]["urls"] == 20 and summary["placeholders_detected"] == [
        {"sha256": hashlib.sha256(jpeg(43)).hexdigest(), "replaced_pictures": 3}
    ]
    assert summary["frequent_replacements"][0] == summary["placeholders_detected"][0]
    assert summary["revived"] == 1 and summary["newly_dead"] == 10
    hosts = ds.dataset(os.path.join(out, "hosts")).to_table().to_pylist()
    assert {h["host"]: h["rows"] for h in hosts} == {"127.0.0.1": 20, "localhost": 1, "(no host)": 1}
    assert summary["by_host"]["hosts"] == 3 and summary["by_host"]["top"][0]["host"] == "127.0.0.1"
    top = summary["by_host"]["top"][0]
    assert top["success_rate"] == pytest.approx(top[verdicts.ALIVE] / 20)
    assert summary["success_rate"]["success_rate"] == pytest.approx(7 / 22)
    assert summary["success_rate"]["by_dataset"]["cc12m"]["success_rate"] == 1.0


def test_three_nights_with_history(world):
    run, history = world["night"], str(world["tmp"] / "history")
    web, images = world["web"], world["images"]
    nights = [datetime.date(2030, 3, d) for d in (1, 2, 3)]
    options = {"dead-after": 2, "host-dead-after": 2}

    out1, _ = run("night1", nights[0].isoformat(), history, **options)
    first = read_status(out1)
    assert first["cc3m:3"]["status"] == verdicts.UNREACHABLE and "dead after 2" in first["cc3m:3"]["error"]
    assert first["cc3m:10"]["status"] == verdicts.UNREACHABLE and first["cc3m:17"]["status"] == verdicts.DEAD
    assert first["cc3m:7"]["status"] == verdicts.CHANGED and first["cc3m:1"]["previous_status"] is None
    night1_files = tree_digest(os.path.join(history, "2030-03-01"))

    out2, _ = run("night2", nights[1].isoformat(), history, **options)
    second = read_status(out2)
    for key in ("cc3m:3", "cc3m:4", "cc3m:10", "cc3m:18"):
        row = second[key]
        assert (row["status"], row["consecutive_failures"], row["newly_dead"], row["dead_since"]) == (
            verdicts.DEAD,
            2,
            True,
            nights[1],
        ), key
    assert second["cc3m:5"]["status"] == verdicts.UNREACHABLE and second["cc3m:5"]["consecutive_failures"] == 2
    assert second["cc3m:7"]["previous_status"] == verdicts.CHANGED and second["cc3m:1"]["previous_nights"] == 1
    summary2 = json.load(open(os.path.join(out2, "summary.json")))
    assert summary2["previous_night"] == "2030-03-01" and summary2["newly_dead"] == 10
    assert summary2["newly_changed"] == 0 and summary2["changed"] == 2

    # the same night again: the same verdicts, the night's history replaced (not appended), night 1 untouched
    out2b, _ = run("night2-again", nights[1].isoformat(), history, **options)
    again = read_status(out2b)
    stable = (
        "status",
        "method",
        "http_status",
        "sha256",
        "phash",
        "consecutive_failures",
        "previous_nights",
        "previous_status",
        "newly_dead",
        "revived",
        "dead_since",
        "reason",
    )
    assert {k: tuple(r[c] for c in stable) for k, r in again.items()} == {
        k: tuple(r[c] for c in stable) for k, r in second.items()
    }
    night2 = ds.dataset(os.path.join(history, "2030-03-02"), format="parquet").to_table()
    assert night2.num_rows == len(EXPECTED) and set(night2.column("night").to_pylist()) == {nights[1]}
    assert tree_digest(os.path.join(history, "2030-03-01")) == night1_files

    # night 3: a dead URL comes back with its picture, a down one recovers, a gone one stays dead
    web.routes["/dead.jpg"] = Reply(200, images["dead"], JPEG)
    web.routes["/down.jpg"] = Reply(200, images["down"], JPEG)
    try:
        out3, _ = run("night3", nights[2].isoformat(), history, **options)
    finally:
        web.routes["/dead.jpg"] = Reply(404, b"not found", {"Content-Type": "text/plain"})
        web.routes["/down.jpg"] = Reply(500, b"oops", {"Content-Type": "text/plain"})
    third = read_status(out3)
    assert (third["cc3m:3"]["status"], third["cc3m:3"]["revived"], third["cc3m:3"]["previous_status"]) == (
        verdicts.ALIVE,
        True,
        verdicts.DEAD,
    )
    assert (third["cc3m:5"]["status"], third["cc3m:5"]["revived"]) == (verdicts.ALIVE, False)
    gone = third["cc3m:4"]
    assert (gone["status"], gone["newly_dead"], gone["dead_since"], gone["consecutive_failures"]) == (
        verdicts.DEAD,
        False,
        nights[1],
        3,
    )
    summary3 = json.load(open(os.path.join(out3, "summary.json")))
    assert summary3["revived"] == 1 and summary3["newly_dead"] == 0 and summary3["previous_night"] == "2030-03-02"
    assert sorted(os.listdir(history)) == ["2030-03-01", "2030-03-02", "2030-03-03"]
    # link rot: of the keys with a picture at ingest, the dead share over the months since the fetch
    rot = summary3["link_rot"]
    alive_at_ingest = sum(1 for r in third.values() if r["ingest_status"] == schema.OK)
    dead = sum(1 for r in third.values() if r["ingest_status"] == schema.OK and r["status"] == verdicts.DEAD)
    assert (rot["alive_at_ingest"], rot["dead_now"]) == (alive_at_ingest, dead)
    assert rot["per_month"] == pytest.approx(dead / alive_at_ingest / rot["mean_months"], rel=1e-3)
    # why here: the snapshot is never touched, byte for byte after four nights with a history (its
    # own test ran a fifth night for this one line)
    assert tree_digest(world["snapshot"]) == world["before"]


# ---- the same job on gs:// (gcp-storage-emulator on loopback) -------------------------------------------

GCS_BUCKET = "refresh-test"


@pytest.fixture
def gcs(monkeypatch):
    server_mod = pytest.importorskip("gcp_storage_emulator.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        from apache_beam.io.gcp import gcsio
        from google.cloud import storage

        # Beam would first spend ~25 s looking for real credentials; there are none here.
        monkeypatch.setattr(gcsio, "create_storage_client", lambda *a, **k: storage.Client.create_anonymous_client())
        yield storage.Client.create_anonymous_client().bucket(GCS_BUCKET)
    finally:
        server.stop()


def test_snapshot_output_and_history_on_gcs(gcs, web, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
    web.routes["/b.jpg"] = Reply(200, jpeg(2), JPEG)
    image = jpeg(3)
    gcs.blob("imagenet/train/n01/x.JPEG").upload_from_string(image)
    fetched = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    rows = []
    for key, url, body in (
        ("cc3m:1", web.url("/a.jpg"), jpeg(1)),
        ("cc3m:2", web.url("/b.jpg"), jpeg(2)),
        ("imagenet_captions:x.JPEG", f"gs://{GCS_BUCKET}/imagenet/train/n01/x.JPEG", image),
    ):
        sha256, phash = picture_of(body)
        rows.append(
            schema.new_row(
                key.split(":")[0],
                key,
                url=url,
                status=schema.OK,
                sha256=sha256,
                phash=phash,
                size_bytes=len(body),
                fetched_at=fetched,
            )
        )
    local = tmp_path / "part-0.parquet"
    pq.write_table(pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema.IMAGE_SCHEMA), local)
    gcs.blob("snap/images/part-0.parquet").upload_from_filename(str(local))
    snapshot_blob = gcs.get_blob("snap/images/part-0.parquet").md5_hash

    def night(date, output):
        refresh_job.run(
            local_options(
                snapshot=f"gs://{GCS_BUCKET}/snap",
                output=f"gs://{GCS_BUCKET}/{output}",
                history=f"gs://{GCS_BUCKET}/history",
                night=date,
                **{"allow-network": "127.0.0.1/32", "timeout": 2.0, "retries": 0, "dead-after": 1},
            )
        )
        tables = [
            pq.read_table(FileSystems.open(m.path))
            for m in FileSystems.match([f"gs://{GCS_BUCKET}/{output}/status/*.parquet"])[0].metadata_list
        ]
        return {r["key"]: r for t in tables for r in t.to_pylist()}

    first = night("2030-02-01", "r1")
    assert {k: (r["status"], r["method"]) for k, r in first.items()} == {
        "cc3m:1": (verdicts.ALIVE, verdicts.HEAD_GET),
        "cc3m:2": (verdicts.ALIVE, verdicts.HEAD_GET),
        "imagenet_captions:x.JPEG": (verdicts.ALIVE, verdicts.FILE),
    }
    web.routes["/b.jpg"] = Reply(404)
    gcs.blob("imagenet/train/n01/x.JPEG").delete()
    second = night("2030-02-02", "r2")
    assert {k: r["status"] for k, r in second.items()} == {
        "cc3m:1": verdicts.ALIVE,
        "cc3m:2": verdicts.DEAD,
        "imagenet_captions:x.JPEG": verdicts.DEAD,
    }
    assert second["cc3m:1"]["previous_nights"] == 1 and second["cc3m:2"]["newly_dead"]
    # a file gone from gs:// is a 'gone' answer (the look-up worked), not a failed look-up
    assert second["imagenet_captions:x.JPEG"]["failure"] == verdicts.GONE
    assert liveness_history.complete_nights(f"gs://{GCS_BUCKET}/history") == [
        datetime.date(2030, 2, 1),
        datetime.date(2030, 2, 2),
    ]
    summary = json.loads(FileSystems.open(f"gs://{GCS_BUCKET}/r2/summary.json").read())
    assert summary["previous_night"] == "2030-02-01" and summary["newly_dead"] == 2

    # the same night again, its books failing: r2 and the night's history objects stay as they were
    def objects():
        mine = ("r2/", "history/2030-02-02/")
        return {b.name: b.md5_hash for b in gcs.client.list_blobs(GCS_BUCKET) if b.name.startswith(mine)}

    kept = objects()
    with mock.patch("transforms.liveness.summary.check_refresh_books", side_effect=BooksUnbalanced("forced")):
        with pytest.raises(BooksUnbalanced):
            night("2030-02-02", "r2")
    assert objects() == kept
    # the same night again into the same places: replaced, not added to
    assert night("2030-02-02", "r2") == {k: dict(r, checked_at=mock.ANY) for k, r in second.items()}
    assert not [name for name in objects() if "_tmp-" in name or name in kept and name.endswith(".parquet")]
    night_files = FileSystems.match([f"gs://{GCS_BUCKET}/history/2030-02-02/*.parquet"])[0].metadata_list
    assert sum(pq.read_table(FileSystems.open(m.path)).num_rows for m in night_files) == 3
    assert gcs.get_blob("snap/images/part-0.parquet").md5_hash == snapshot_blob


def test_night_in_the_output_path_gives_each_night_its_folder(world):
    world["night"]("dated/{night}", night="2030-01-05")
    dated = os.path.join(world["tmp"], "dated", "2030-01-05")
    assert os.path.exists(os.path.join(dated, "summary.json"))
    assert read_status(dated)  # one row per snapshot key, under the night's own folder


@pytest.fixture(scope="module")
def first_night(world):
    """One night, 2030-05-01, with its history: the starting point of the reruns below. Read-only:
    a test works on its own copy (copy_of_first_night)."""
    history = str(world["tmp"] / "first-night-history")
    # why: the autouse refresh_today (tests/conftest.py) is per test; a module fixture runs outside it
    with mock.patch.object(verdicts, "utc_today", return_value=TESTS_TODAY):
        out, _ = world["night"]("first-night", "2030-05-01", history)
    return out, history


def copy_of_first_night(world, first_night, output, history_name):
    """first_night's REFRESH_OUT and HISTORY copied to `output` and `history_name` under the
    world's folder (where world["night"] writes); returns their paths."""
    out, history = str(world["tmp"] / output), str(world["tmp"] / history_name)
    shutil.copytree(first_night[0], out)
    shutil.copytree(first_night[1], history)
    return out, history


def test_a_failed_nights_unfinished_files_are_removed_by_the_next(world, first_night):
    out, _ = copy_of_first_night(world, first_night, "stale-temporaries", "history-stale")
    unfinished = os.path.join(out, "status", "_tmp-0123abcd", "part-00000.parquet")
    os.makedirs(os.path.dirname(unfinished))
    with open(unfinished, "wb") as handle:
        handle.write(b"PAR1 cut short")
    world["night"]("stale-temporaries")
    assert not os.path.exists(unfinished)
    assert len(read_status(out)) == len(EXPECTED)


def test_a_rerun_whose_books_fail_leaves_the_previous_night_whole(world, first_night):
    """The data team deletes rows on REFRESH_OUT's verdicts: a rerun of the night that fails (here
    its books) must leave REFRESH_OUT and the complete history night of the first run byte for byte,
    and no files aside. Before, the rerun cleared both first and left them empty."""
    out, history = copy_of_first_night(world, first_night, "rerun-books", "history-rerun")
    night_dir = os.path.join(history, "2030-05-01")
    first, first_night = tree_digest(out), tree_digest(night_dir)
    assert len(read_status(out)) == len(EXPECTED) and "_COMPLETE" in first_night

    unbalanced = BooksUnbalanced("the books do not balance: forced by the test")
    with mock.patch.object(summary, "check_refresh_books", side_effect=unbalanced):
        with pytest.raises(BooksUnbalanced, match="forced by the test"):
            world["night"]("rerun-books", "2030-05-01", history)
    assert tree_digest(out) == first and tree_digest(night_dir) == first_night
    assert not glob.glob(os.path.join(out, "**", "_tmp-*"), recursive=True)
    assert not glob.glob(os.path.join(night_dir, "_tmp-*"))

    # a rerun that balances replaces both: only its own files, the first run's retired
    world["night"]("rerun-books", "2030-05-01", history)
    assert len(read_status(out)) == len(EXPECTED)
    marker = json.load(open(os.path.join(night_dir, "_COMPLETE")))
    assert sorted(os.listdir(night_dir)) == sorted(["_COMPLETE", *marker["files"]])
    assert not set(tree_digest(out)) & (set(first) - {"summary.json"})
    assert json.load(open(os.path.join(out, "summary.json")))["written"] == sorted(
        os.listdir(os.path.join(out, "status"))
    )


def test_a_night_whose_history_cannot_be_published_leaves_refresh_out_on_the_previous_night(world, first_night):
    """REFRESH_OUT is put in place after the history night, never before: a run stopped between the
    two left REFRESH_OUT on a night the history lacked (the next night's streaks skipped it; the kill
    sweep's finding). Here the history night's marker cannot be moved into place (its name is taken
    by a folder): the run fails and REFRESH_OUT stays on the first night, byte for byte."""
    out, history = copy_of_first_night(world, first_night, "out-order", "history-order")
    first = tree_digest(out)
    os.makedirs(os.path.join(history, "2030-05-02", "_COMPLETE", "in-the-way"))
    with pytest.raises(OSError, match="_COMPLETE"):  # storage failed: the job's exit 1
        world["night"]("out-order", "2030-05-02", history)
    assert tree_digest(out) == first
