"""The live progress line: tallies written by the pipeline stage, aggregated and printed by the driver."""

import gzip
import io
import json
import os
import time

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipelines.report import progress_line
from transforms import schema
from transforms.record_progress import ProgressTally, RecordProgress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def write_tally(directory, name, rows, statuses, size=0):
    with open(os.path.join(directory, name), "w") as handle:
        json.dump({"rows": rows, "bytes": size, "statuses": statuses}, handle)


def test_tally_flushes_about_once_an_interval_and_atomically(tmp_path):
    clock = FakeClock()
    tally = ProgressTally(str(tmp_path), interval=1.0, clock=clock)
    tally.add("ok", 100)
    assert not os.path.exists(tally.path)  # not yet due
    clock.now += 1.5
    tally.add("timeout")
    with open(tally.path) as handle:
        assert json.load(handle)["statuses"] == {"ok": 1, "timeout": 1}
    tally.add("ok", 50)
    with open(tally.path) as handle:
        assert json.load(handle)["rows"] == 2  # the third row waits for the next interval or flush()
    tally.flush()
    with open(tally.path) as handle:
        assert json.load(handle) | {"updated": 0} == {
            "rows": 3,
            "bytes": 150,
            "statuses": {"ok": 2, "timeout": 1},
            "updated": 0,
        }
    assert os.listdir(tmp_path) == [os.path.basename(tally.path)]  # no temporary left behind


def test_tally_flush_survives_a_removed_directory(tmp_path):
    tally = ProgressTally(str(tmp_path / "gone"))
    tally.add("ok")
    tally.flush()  # must not raise


def test_aggregate_sums_every_worker_and_skips_junk(tmp_path):
    write_tally(tmp_path, "1-a.json", 10, {"ok": 7, "timeout": 3}, 700)
    write_tally(tmp_path, "2-b.json", 5, {"ok": 5}, 500)
    (tmp_path / "3-c.json").write_text("{not json")
    (tmp_path / "4-d.json.tmp").write_text('{"rows": 1000}')
    totals = progress_line.aggregate(str(tmp_path))
    assert totals == {"rows": 15, "bytes": 1200, "statuses": {"ok": 12, "timeout": 3}, "workers": 2}
    assert progress_line.aggregate(str(tmp_path / "missing"))["rows"] == 0


def test_manifest_rows_are_counted_per_format(tmp_path):
    (tmp_path / "a.tsv").write_text("cap\thttp://x/1\ncap\thttp://x/2\ncap\thttp://x/3")  # no final newline
    (tmp_path / "b.tsv.gz").write_bytes(gzip.compress(b"http://x/1\tc\nhttp://x/2\tc\n"))
    (tmp_path / "oi.csv").write_text("ImageID,OriginalURL\n1,http://x/1\n2,http://x/2\n")
    assert (
        progress_line.count_manifest_rows(
            [
                ("cc3m", str(tmp_path / "a.tsv")),
                ("cc12m", str(tmp_path / "b.tsv.gz")),
                ("openimages", str(tmp_path / "*.csv")),
            ]
        )
        == 3 + 2 + 2
    )
    assert (
        progress_line.count_manifest_rows([("cc3m", str(tmp_path / "a.tsv")), ("zero", str(tmp_path / "z.json"))])
        is None
    )
    assert progress_line.count_manifest_rows([("cc3m", "gs://bucket/a.tsv")]) is None
    assert progress_line.count_manifest_rows([("cc3m", str(tmp_path / "nothing-*.tsv"))]) is None


def test_line_shows_fraction_rate_ok_share_bytes_and_eta():
    totals = {"rows": 250, "bytes": 2_500_000, "statuses": {"ok": 200, "http_error": 50}}
    line = progress_line.format_line(totals, 1000, 10.0, 50.0)
    assert "250/1,000 rows (25.0%)" in line and "50.0 rows/s" in line and "ok 80.0%" in line
    assert "2.5 MB" in line and "ETA 0:00:15" in line  # 750 rows left at 50 rows/s
    unknown = progress_line.format_line(totals, None, 10.0, 50.0)
    assert "250 rows" in unknown and "ETA -" in unknown and "/" not in unknown.split("rows")[0]
    assert "writing outputs" in progress_line.format_line(dict(totals, rows=1000), 1000, 10.0, 0.0)
    final = progress_line.format_line(totals, 1000, 10.0, 0.0, final=True)
    assert final.startswith("progress: done, 250 rows") and "25.0 rows/s" in final and "ok 80.0%" in final


def test_rate_uses_the_recent_window():
    meter = progress_line.RateMeter(window=10.0)
    assert meter.update(0.0, 0) == 0.0
    assert meter.update(5.0, 500) == 100.0
    for t in range(6, 40):
        rate = meter.update(float(t), 500 + (t - 5) * 10)  # slowed down to 10 rows/s
    assert 9.0 <= rate <= 11.0


class TtyBuffer(io.StringIO):
    def isatty(self):
        return True


def test_live_progress_prints_plain_lines_then_a_final_one(tmp_path):
    stream = io.StringIO()
    with progress_line.LiveProgress(
        enabled=True, stream=stream, interval=0.05, plain_interval=0.1, total_rows=20
    ) as live:
        live.start()
        write_tally(live.directory, "1-a.json", 5, {"ok": 4, "timeout": 1})
        time.sleep(0.4)
        write_tally(live.directory, "1-a.json", 20, {"ok": 15, "timeout": 5}, 2000)
        time.sleep(0.4)
        directory = live.directory
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert any("5/20 rows (25.0%)" in line and "ok 80.0%" in line for line in lines), lines
    assert any("20/20 rows" in line and "writing outputs" in line for line in lines), lines
    assert lines[-1].startswith("progress: done, 20 rows") and "ok 75.0%" in lines[-1] and "2.0 kB" in lines[-1]
    assert not os.path.exists(directory)


def test_live_progress_rewrites_one_line_on_a_terminal():
    stream = TtyBuffer()
    with progress_line.LiveProgress(enabled=True, stream=stream, interval=0.05, total_rows=None) as live:
        live.start()
        write_tally(live.directory, "1-a.json", 3, {"ok": 3})
        time.sleep(0.3)
    text = stream.getvalue()
    assert text.count("\r") >= 2 and text.endswith("\n") and text.count("\n") == 1
    assert "3 rows" in text and "ETA -" in text


def test_disabled_or_unstarted_progress_prints_nothing():
    stream = io.StringIO()
    with progress_line.LiveProgress(enabled=False, stream=stream) as live:
        assert live.directory is None
        live.start()
    with progress_line.LiveProgress(enabled=True, stream=stream) as live:
        directory = live.directory
        assert os.path.isdir(directory)
    assert stream.getvalue() == "" and not os.path.exists(directory)


def test_record_progress_passes_rows_through_counts_metrics_and_writes_tallies(tmp_path):
    rows = [
        schema.new_row("cc3m", "cc3m:1", "http://x/1", status=schema.OK, size_bytes=1000, fetch_ms=30),
        schema.new_row("cc3m", "cc3m:2", "http://x/2", status=schema.OK, size_bytes=3000, fetch_ms=50),
        schema.new_row("cc12m", "cc12m:1", "http://x/3", status=schema.TIMEOUT, fetch_ms=2000),
        schema.new_row("cc12m", "cc12m:2", "http://x/4", status=schema.NOT_IMAGE, size_bytes=20, fetch_ms=10),
    ]
    pipeline = beam.Pipeline(runner="FnApiRunner")
    out = pipeline | beam.Create(rows) | RecordProgress(str(tmp_path))
    assert_that(out | beam.Map(lambda r: r["key"]), equal_to([r["key"] for r in rows]))
    result = pipeline.run()
    result.wait_until_finish()
    totals = progress_line.aggregate(str(tmp_path))
    assert totals["rows"] == 4 and totals["bytes"] == 4020
    assert totals["statuses"] == {"ok": 2, "timeout": 1, "not_image": 1}
    query = result.metrics().query()
    counters = {(r.key.metric.namespace, r.key.metric.name): r.committed for r in query["counters"]}
    assert counters[("rows", "ok")] == 2 and counters[("rows_by_dataset", "cc12m.timeout")] == 1
    assert counters[("bytes", "ok")] == 4000 and counters[("bytes", "not_image")] == 20
    dists = {(r.key.metric.namespace, r.key.metric.name): r.committed for r in query["distributions"]}
    assert dists[("latency_ms", "ok")].count == 2 and dists[("latency_ms", "ok")].max == 50
    assert dists[("size_bytes", "ok")].sum == 4000
