"""'Dead' only on evidence, history never silently lost (issue 18): the rules with the default
settings, the first night, pictures we cannot decode, ImageNet look-ups, history and output errors."""

import dataclasses
import datetime
import hashlib
import json
import os
from unittest import mock

import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import jpeg
from transforms import schema
from transforms.errors import BadInput, EnvironmentFailure
from transforms.image_checks import inspect_image
from transforms.liveness import history as liveness_history
from transforms.liveness import night_output, plans, verdicts

NIGHT = datetime.date(2030, 3, 1)
DEFAULTS = verdicts.RefreshParams(night=NIGHT)
UTC = datetime.timezone.utc
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def entry(status=schema.OK, body=None, http_status=None, content_type="image/jpeg", **fields):
    body = jpeg(1) if body is None else body
    kept = status in verdicts.BASELINE_STATUSES or status == schema.NOT_IMAGE
    row = dict(
        key="cc3m:1",
        dataset="cc3m",
        url="http://example.com/a.jpg",
        status=status,
        http_status=http_status,
        sha256=hashlib.sha256(body).hexdigest() if kept else None,
        phash=inspect_image(body).phash if status in verdicts.BASELINE_STATUSES else None,
        content_type=content_type,
        fetched_at=datetime.datetime(2030, 1, 1, tzinfo=UTC),
    )
    row.update(fields)
    return verdicts.snapshot_entry(row, "snap")


def got(body, content_type="image/jpeg", method=verdicts.GET, http_status=200):
    check = plans.new_check({"method": method})
    check.update(
        status=schema.OK,
        http_status=http_status,
        final_url="http://example.com/a.jpg",
        requests=1,
        content_type=content_type,
    )
    return plans._picture(check, body, 10_000_000)  # pylint: disable=protected-access


def failed(status, http_status=None, **flags):
    check = plans.new_check({"method": verdicts.HEAD})
    check.update(status=status, http_status=http_status, error=f"{status} {http_status}", requests=1, **flags)
    return check


def nights(snap, checks, params=DEFAULTS, previous=None):
    """Judges `checks` on consecutive nights; returns [(verdict, consecutive_failures, newly_dead)]."""
    seen = []
    for n, check in enumerate(checks):
        params = dataclasses.replace(params, night=NIGHT + datetime.timedelta(days=n))
        previous = verdicts.judge(snap, check, previous, {}, params)
        seen.append((previous["status"], previous["consecutive_failures"], previous["newly_dead"]))
    return seen


U, D, A = verdicts.UNREACHABLE, verdicts.DEAD, verdicts.ALIVE


# ---- which observations are evidence, after how many nights -------------------------------------------


def test_a_404_is_dead_on_the_second_night_by_default():
    assert verdicts.DEFAULT_DEAD_AFTER == 2 and verdicts.DEFAULT_HOST_DEAD_AFTER == 4
    assert nights(entry(), [failed(schema.HTTP_ERROR, 404)] * 3) == [(U, 1, False), (D, 2, True), (D, 3, False)]
    assert nights(entry(), [failed(schema.HTTP_ERROR, 410), got(jpeg(1)), failed(schema.HTTP_ERROR, 410)]) == [
        (U, 1, False),
        (A, 0, False),
        (U, 1, False),
    ]  # a success in between restarts the count


@pytest.mark.parametrize("flags", [{"name_not_found": True}, {"refused": True}])
def test_dns_gone_and_refused_need_more_nights_than_a_404(flags):
    check = failed(schema.CONNECTION_ERROR, **flags)
    assert verdicts.classify_failure(schema.CONNECTION_ERROR, None, **flags) == verdicts.NO_HOST
    seen = nights(entry(), [check] * 5)
    assert seen == [(U, 1, False), (U, 2, False), (U, 3, False), (D, 4, True), (D, 5, False)]


def test_evidence_is_counted_in_answers_not_in_failed_nights():
    timeout, gone = failed(schema.TIMEOUT), failed(schema.HTTP_ERROR, 404)
    refused = failed(schema.CONNECTION_ERROR, refused=True)
    # transient nights then one 'gone' answer: one answer is not proof (--dead-after 2)
    assert nights(entry(), [timeout, gone, gone]) == [(U, 1, False), (U, 2, False), (D, 3, True)]
    # three timeouts then a refusal: one 'no_host' answer of the 4 --host-dead-after needs
    seen = nights(entry(), [timeout] * 3 + [refused] * 4)
    assert seen[3:] == [(U, 4, False), (U, 5, False), (U, 6, False), (D, 7, True)]
    # 404s count as 'no_host' evidence too; a transient night between two 404s keeps the count
    assert nights(entry(), [gone, refused, refused, refused])[-1] == (D, 4, True)
    assert nights(entry(), [gone, timeout, gone]) == [(U, 1, False), (U, 2, False), (D, 3, True)]
    # the ingest fetch's 404 is one 'gone' answer; a transient failure at ingest is none
    assert nights(entry(schema.HTTP_ERROR, http_status=404), [gone])[0] == (D, 2, True)
    assert nights(entry(schema.TIMEOUT), [gone, gone]) == [(U, 2, False), (D, 3, True)]


@pytest.mark.parametrize(
    "check",
    [
        failed(schema.HTTP_ERROR, 403),
        failed(schema.HTTP_ERROR, 500),
        failed(schema.HTTP_ERROR, 503),
        failed(schema.HTTP_ERROR, 429),
        failed(schema.TIMEOUT),
        failed(schema.CONNECTION_ERROR),  # a reset
        failed(schema.TIMEOUT, 200),  # the status line came, the body did not
    ],
    ids=["403", "500", "503", "429", "timeout", "reset", "slow-body"],
)
def test_what_we_could_not_judge_is_unreachable_for_many_nights(check):
    strict = dataclasses.replace(DEFAULTS, dead_after=1, host_dead_after=1)
    seen = nights(entry(), [check] * 10, strict)
    assert {s[0] for s in seen} == {U} and seen[-1][1] == 10


# ---- pictures we cannot decode ------------------------------------------------------------------------------


def test_unchanged_bytes_we_cannot_decode_are_alive_with_the_picture_not_checked():
    snap = entry(schema.NOT_IMAGE, SVG, content_type="image/svg+xml", etag='"s1"')
    assert verdicts.ingest_failure(snap) is None  # an SVG at ingest is not a failure
    row = verdicts.judge(snap, got(SVG, "image/svg+xml"), None, {}, DEFAULTS)
    assert (row["status"], row["picture_unchecked"], row["failure"]) == (A, True, None)
    assert "not checked" in row["reason"] and row["sha256"] == snap["sha256"]
    # with its ETag: a conditional GET, and a 304 is alive the same way
    plan = plans.plan_check(snap["url"], [snap], DEFAULTS)
    assert plan["method"] == verdicts.CONDITIONAL and plan["headers"] == {"If-None-Match": '"s1"'}
    check = plans.new_check(plan)
    check.update(status=schema.OK, http_status=304, not_modified=True, requests=1)
    row = verdicts.judge(snap, check, None, {}, DEFAULTS)
    assert (row["status"], row["picture_unchecked"]) == (A, True)


def test_changed_bytes_we_cannot_decode_are_never_dead():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert plans.looks_like_image("application/octet-stream", heic) and plans.looks_like_image(None, SVG)
    assert not plans.looks_like_image("text/html", b"<html>gone</html>")
    strict = dataclasses.replace(DEFAULTS, dead_after=1, host_dead_after=1)
    for snap, body, content_type in (
        (entry(schema.NOT_IMAGE, SVG, content_type="image/svg+xml"), SVG.replace(b"10", b"20"), "image/svg+xml"),
        (entry(), heic, "application/octet-stream"),  # a JPEG now served as HEIC
        (entry(), heic, "image/heic"),
    ):
        row = verdicts.judge(snap, got(body, content_type), None, {}, strict)
        assert (row["status"], row["failure"]) == (U, verdicts.TRANSIENT), content_type
        assert "picture not checked" in row["reason"]
    # a web page in place of the picture is still a soft 404
    row = verdicts.judge(entry(), got(b"<html>removed</html>", "text/html"), None, {}, strict)
    assert (row["status"], row["failure"]) == (D, verdicts.GONE) and "soft 404" in row["reason"]


# ---- the first night: the ingest fetch is the night before ----------------------------------------------------


def test_first_night_the_ingest_fetch_counts_as_the_night_before():
    was_404 = entry(schema.HTTP_ERROR, http_status=404)
    # --dead-after 2 (default): the ingest 404 and tonight's 404 are two nights: dead tonight, newly
    assert nights(was_404, [failed(schema.HTTP_ERROR, 404)]) == [(D, 2, True)]
    row = verdicts.judge(was_404, failed(schema.HTTP_ERROR, 404), None, {}, DEFAULTS)
    assert "the ingest fetch included" not in row["reason"] and row["previous_status"] is None
    # ... but a timeout tonight is not a second 'gone' answer
    assert nights(was_404, [failed(schema.TIMEOUT)]) == [(U, 2, False)]
    # and a picture tonight is alive, not a revival (it was never judged dead)
    back = verdicts.judge(was_404, got(jpeg(3)), None, {}, DEFAULTS)
    assert (back["status"], back["revived"]) == (A, False)
    # --dead-after 1: the ingest 404 alone is dead; it stays dead while failing, and a picture revives it
    at_once = dataclasses.replace(DEFAULTS, dead_after=1)
    assert nights(was_404, [failed(schema.TIMEOUT)], at_once) == [(D, 2, False)]
    assert verdicts.judge(was_404, got(jpeg(3)), None, {}, at_once)["revived"] is True
    # a key alive at ingest starts from nothing: one 404 is one night
    assert nights(entry(), [failed(schema.HTTP_ERROR, 404)]) == [(U, 1, False)]


def test_the_reason_of_a_key_dead_at_ingest_names_the_ingest_not_an_earlier_night():
    was_invalid = entry(schema.INVALID_URL, url="notaurl")
    tonight = failed(schema.INVALID_URL)
    first = verdicts.judge(was_invalid, tonight, None, {}, DEFAULTS)
    assert first["status"] == D and "at its ingest fetch too" in first["reason"], first["reason"]
    assert "earlier night" not in first["reason"]
    second = verdicts.judge(
        was_invalid, tonight, first, {}, dataclasses.replace(DEFAULTS, night=NIGHT + datetime.timedelta(days=1))
    )
    assert second["status"] == D and "dead since an earlier night" in second["reason"], second["reason"]


# ---- ImageNet files: a look-up that fails is not a missing file -----------------------------------------------


def file_plan(path, size):
    return {"url": path, "method": verdicts.FILE, "size_bytes": size, "validated_sha256": None, "validated_phash": None}


def test_a_failing_file_listing_is_retried_then_transient(tmp_path):
    path = tmp_path / "n01440764_1.JPEG"
    path.write_bytes(jpeg(2))
    real_match = FileSystems.match
    calls = {"n": 0}

    def flaky_match(patterns, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("503 Service Unavailable: listing throttled")
        return real_match(patterns, *args, **kwargs)

    with (
        mock.patch.object(plans, "LISTING_BACKOFF_SECONDS", 0.0),
        mock.patch.object(FileSystems, "match", side_effect=flaky_match),
    ):
        check = plans.check_file(file_plan(str(path), len(jpeg(2))))
    assert (check["status"], check["not_modified"], calls["n"]) == (schema.OK, True, 3)

    def broken(*_args, **_kwargs):
        raise OSError("403 Forbidden: storage permission hiccup")

    with (
        mock.patch.object(plans, "LISTING_BACKOFF_SECONDS", 0.0),
        mock.patch.object(FileSystems, "match", side_effect=broken),
        mock.patch.object(FileSystems, "exists", side_effect=broken),
    ):
        check = plans.check_file(file_plan(str(path), len(jpeg(2))))
    assert check["status"] == schema.CONNECTION_ERROR and "after 3 attempts" in check["error"]
    row = verdicts.judge(entry(url=str(path)), check, None, {}, dataclasses.replace(DEFAULTS, dead_after=1))
    assert (row["status"], row["failure"]) == (U, verdicts.TRANSIENT)
    missing = plans.check_file(file_plan(str(tmp_path / "gone.JPEG"), 10))
    assert (missing["status"], missing["http_status"]) == (schema.HTTP_ERROR, 404)


# ---- history and output errors fail the run, in one line ------------------------------------------------------


def write_night(history, night, keys=("cc3m:1",)):
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = os.path.join(history, night.isoformat())
    os.makedirs(directory)
    rows = [
        {c: None for c in schema.REFRESH_COLUMNS}
        | {"key": k, "night": night, "status": A, "consecutive_failures": 0, "previous_nights": 0}
        for k in keys
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.REFRESH_SCHEMA), os.path.join(directory, "part-0.parquet"))
    with open(os.path.join(directory, "_COMPLETE"), "w") as handle:
        json.dump({"night": night.isoformat(), "rows": len(rows), "files": ["part-0.parquet"]}, handle)
    return directory


def test_history_read_errors_fail_instead_of_starting_over(tmp_path):
    history = str(tmp_path / "history")
    assert liveness_history.previous_night(history, NIGHT) is None  # no history yet: the first night
    directory = write_night(history, NIGHT - datetime.timedelta(days=1))
    assert liveness_history.night_files(history, NIGHT - datetime.timedelta(days=1))[0]

    with mock.patch.object(FileSystems, "match", side_effect=OSError("503 backend error")):
        with pytest.raises(EnvironmentFailure, match=r"cannot list the history .*history.*503 backend error"):
            liveness_history.previous_night(history, NIGHT)
    with mock.patch.object(FileSystems, "open", side_effect=OSError("403 forbidden")):
        with pytest.raises(EnvironmentFailure, match=r"cannot read the history marker .*2030-02-28/_COMPLETE"):
            liveness_history.ReadHistory(history, NIGHT)
    part = os.path.join(directory, "part-0.parquet")
    opened = FileSystems.open

    def open_all_but_the_part(path, **kwargs):
        if path == part:
            raise OSError("503 backend error")
        return opened(path, **kwargs)

    # The marker reads, the night's file does not: the storage failed (exit 1), not the night.
    with mock.patch.object(FileSystems, "open", side_effect=open_all_but_the_part):
        with pytest.raises(EnvironmentFailure, match=r"cannot read the history file .*2030-02-28/part-0.parquet"):
            liveness_history.ReadHistory(history, NIGHT)


# A damaged night is the user's to repair (exit 2), like a damaged page of it (test_mishaps) and a
# damaged input table: a retry cannot help (docs/refresh.md, "History, idempotency").
DAMAGED_NIGHT = {
    "footer": (
        lambda d: open(os.path.join(d, "part-0.parquet"), "wb").write(b"PAR1 not really"),
        r"2030-02-28/part-0.parquet: damaged Parquet file \(unreadable footer: .*\); restore it",
    ),
    "missing file": (
        lambda d: os.remove(os.path.join(d, "part-0.parquet")),
        r"2030-02-28/part-0.parquet is listed in _COMPLETE but missing; restore it, or re-run the refresh of 2030-02",
    ),
    "marker": (
        lambda d: open(os.path.join(d, "_COMPLETE"), "w").write('{"night": "2030-02-28"'),
        r"2030-02-28/_COMPLETE is not a readable marker",
    ),
    "columns": (
        lambda d: pa_write(os.path.join(d, "part-0.parquet"), {"key": ["cc3m:1"]}),
        r"2030-02-28/part-0.parquet has no url, night, status, .* column: not a history night",
    ),
}


def pa_write(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("damage", sorted(DAMAGED_NIGHT))
def test_a_damaged_history_night_is_bad_input(tmp_path, damage):
    history = str(tmp_path / "history")
    directory = write_night(history, NIGHT - datetime.timedelta(days=1))
    spoil, message = DAMAGED_NIGHT[damage]
    spoil(directory)
    with pytest.raises(BadInput, match=message) as failure:
        liveness_history.ReadHistory(history, NIGHT)
    assert failure.value.exit_status == 2


def test_the_job_stops_in_one_line_before_deleting_anything(tmp_path, capsys):
    history = str(tmp_path / "history")
    directory = write_night(history, NIGHT - datetime.timedelta(days=1))
    with open(os.path.join(directory, "part-0.parquet"), "r+b") as handle:  # a byte of the footer flipped
        handle.seek(-10, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-10, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    snapshot = tmp_path / "snapshot" / "images"
    snapshot.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [schema.to_parquet_record(schema.new_row("cc3m", "cc3m:1", "http://x/a"))], schema=schema.IMAGE_SCHEMA
        ),
        str(snapshot / "part-0.parquet"),
    )
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    (out / "status" / "part-old.parquet").write_bytes(b"last run")
    code = refresh_job.main(
        [
            "--runner=FnApiRunner",
            f"--snapshot={tmp_path / 'snapshot'}",
            f"--output={out}",
            f"--history={history}",
            f"--night={NIGHT.isoformat()}",
        ]
    )
    err = capsys.readouterr().err
    # A damaged night is the user's to repair: exit 2 (before, an unreadable footer was exit 1 and a
    # flipped page exit 2); the run stops before anything is deleted.
    assert code == 2 and err.count("\n") == 1, err
    assert "2030-02-28/part-0.parquet: damaged Parquet file (unreadable footer" in err, err
    assert "Traceback" not in err and (out / "status" / "part-old.parquet").exists()  # nothing deleted


def test_sweeping_what_killed_runs_left_fails_the_run_on_storage_errors(tmp_path):
    """A killed run's files aside (REFRESH_OUT/_tmp-*, HISTORY/<night>/_tmp-*) are removed by the
    next run, any error failing it; the outputs themselves are never touched there."""
    out = tmp_path / "out"
    (out / "status").mkdir(parents=True)
    (out / "status" / "part-old.parquet").write_bytes(b"last run")
    (out / "_tmp-killed" / "status").mkdir(parents=True)
    (out / "_tmp-killed" / "status" / "part-killed-00000-of-00001.parquet").write_bytes(b"cut short")
    history = str(tmp_path / "history")
    night = write_night(history, NIGHT)
    os.makedirs(os.path.join(night, "_tmp-killed"))
    with open(os.path.join(night, "_tmp-killed", "part-killed-00000-of-00001.parquet"), "wb") as handle:
        handle.write(b"cut short")
    with mock.patch.object(FileSystems, "delete", side_effect=OSError("permission denied")):
        with pytest.raises(EnvironmentFailure, match=r"cannot clear .*_tmp-.*permission denied"):
            night_output.sweep_leftovers(str(out), history, NIGHT)
    with mock.patch.object(FileSystems, "delete"):  # a delete that 'succeeds' but leaves the file
        with pytest.raises(EnvironmentFailure, match=r"part-killed-00000-of-00001.parquet is still there"):
            night_output.sweep_leftovers(str(out), history, NIGHT)
    night_output.sweep_leftovers(str(out), history, NIGHT)  # and when storage works, it sweeps
    assert sorted(os.listdir(out)) == ["status"] and os.listdir(out / "status") == ["part-old.parquet"]
    assert sorted(os.listdir(night)) == ["_COMPLETE", "part-0.parquet"]


def _night_files(directory, run, urls, shards):
    """REFRESH_OUT-style Parquet files of one run: `urls` spread over `shards` files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    for i in range(shards):
        table = pa.table({"url": urls[i::shards], "night": [run] * len(urls[i::shards])})
        pq.write_table(table, os.path.join(directory, f"part-{run}-{i:05d}-of-{shards:05d}.parquet"))


def _glob_rows(out):
    import pyarrow.parquet as pq

    return sorted(r["url"] for r in pq.read_table(str(out / "status")).to_pylist())


@pytest.mark.parametrize("switched", [False, True], ids=["killed-before-the-summary", "killed-after-it"])
def test_the_next_run_settles_a_publish_killed_half_way_to_one_row_per_url(tmp_path, switched):
    """A run killed during publish_output leaves the old and the new night's files side by side in
    status/ and hosts/ (the move is renames, one per file): a reader globbing status/*.parquet (the
    contract's way) reads every URL twice. The next run's sweep, under the lease and before it
    writes, keeps only the run summary.json names; with no summary to go by it touches nothing."""
    out = tmp_path / "out"
    urls = [f"http://x/{i}.jpg" for i in range(6)]
    for run in ("0ld0ld0ld0ld", "cut0cut0cut0"):
        _night_files(out / "status", run, urls, 2)
        _night_files(out / "hosts", run, ["x"], 1)
    in_place = "cut0cut0cut0" if switched else "0ld0ld0ld0ld"
    written = [f"part-{in_place}-{i:05d}-of-00002.parquet" for i in range(2)]
    (out / "summary.json").write_text(json.dumps({"written": written}))
    assert _glob_rows(out) == sorted(urls * 2)  # the doubled rows a kill mid-publish leaves

    night_output.sweep_leftovers(str(out), None, NIGHT)

    assert _glob_rows(out) == sorted(urls)
    assert sorted(os.listdir(out / "status")) == written
    assert os.listdir(out / "hosts") == [f"part-{in_place}-00000-of-00001.parquet"]


@pytest.mark.parametrize(
    "summary",
    [
        None,
        "{not json",
        {"written": []},
        {"written": ["part-00000-of-00001.parquet"]},
        {"other": 1},
        {"written": [7]},
        ["part-0ld0ld0ld0ld-00000-of-00001.parquet"],
    ],
    ids=["no-summary", "unreadable", "nothing-written", "names-without-a-run", "no-written", "not-names", "not-a-dict"],
)
def test_settling_a_publish_touches_nothing_without_a_summary_naming_one_run(tmp_path, summary):
    out = tmp_path / "out"
    for run in ("0ld0ld0ld0ld", "cut0cut0cut0"):
        _night_files(out / "status", run, ["http://x/a.jpg"], 1)
    if summary is not None:
        (out / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    before = sorted(os.listdir(out / "status"))
    night_output.settle_publish(str(out))
    assert sorted(os.listdir(out / "status")) == before and len(before) == 2


def test_a_16_bit_photo_is_judged_alive_not_a_blank_placeholder():
    """The issue's first case: a 16-bit greyscale photo used to hash as the blank picture, be
    flagged a placeholder and be judged dead at its live URL."""
    import io

    import numpy
    from PIL import Image

    from pipelines.demo.sample_site import picture

    grey = numpy.asarray(picture(12).convert("L"), dtype=numpy.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    body = buffer.getvalue()
    snap = entry(body=body, content_type="image/png")
    assert snap["phash"] not in DEFAULTS.placeholder_phash
    strict = dataclasses.replace(DEFAULTS, dead_after=1)
    row = verdicts.judge(snap, got(body, "image/png"), None, {}, strict)
    assert (row["status"], row["placeholder"], row["picture_unchecked"]) == (A, False, False)


def test_the_same_web_page_as_at_ingest_is_no_live_picture():
    page = b"<html>This photo was removed</html>"
    snap = entry(schema.NOT_IMAGE, page, content_type="text/html")
    assert verdicts.ingest_failure(snap) == verdicts.GONE  # a soft 404 at ingest already
    row = verdicts.judge(snap, got(page, "text/html"), None, {}, DEFAULTS)
    assert (row["status"], row["picture_unchecked"], row["consecutive_failures"]) == (D, False, 2)
