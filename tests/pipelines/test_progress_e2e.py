"""An ingest run with the live progress line on: what it prints, and what it leaves in OUT."""

import json
import os
import re

import pytest

from pipelines import ingest
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options

LINE = re.compile(r"progress: ([\d,]+)/([\d,]+) rows \(([\d.]+)%\)\s+([\d,.]+) rows/s\s+ok ([\d.]+|-)%?")
FINAL = re.compile(r"progress: done, ([\d,]+) rows in [\d:]+ \(([\d,.]+) rows/s\), ok ([\d.]+)%, ([\d.]+) (B|kB|MB)")
ROWS = 30


def test_progress_lines_with_sensible_numbers(tmp_path, capfd):
    from pipelines.demo.sample_site import SampleWebServer

    with SampleWebServer() as web:
        for n in range(ROWS):
            # Slow answers, one connection at a time: the run lasts a few seconds, long enough for lines.
            web.routes[f"/p{n}.jpg"] = (
                Reply(200, jpeg(n % 6), {"Content-Type": "image/jpeg"}, delay=0.12)
                if n % 5
                else Reply(404, b"gone", delay=0.12)
            )
        (tmp_path / "cc3m.tsv").write_text("".join(f"photo {n}\t{web.base}/p{n}.jpg\n" for n in range(ROWS)))
        out = str(tmp_path / "out")
        ingest.run(
            local_options(
                manifest=f"cc3m={tmp_path / 'cc3m.tsv'}",
                output=out,
                **{"allow-network": "127.0.0.1/32", "per-host": 1, "concurrency": 2, "progress-interval": 0.25},
            )
        )
    err = capfd.readouterr().err
    lines = [m.groups() for m in LINE.finditer(err)]
    assert len(lines) >= 3, err
    done = [int(d.replace(",", "")) for d, *_ in lines]
    assert all(int(t.replace(",", "")) == ROWS for _, t, *_ in lines)  # the manifest's rows, counted
    assert done == sorted(done) and 0 < max(done) <= ROWS, done  # never backwards, never beyond
    assert any(0 < d < ROWS for d in done), done  # caught mid-run, not just the end
    for d, _, pct, rate, ok in lines:
        assert float(pct) == pytest.approx(100.0 * int(d.replace(",", "")) / ROWS, abs=0.06)
        assert float(rate.replace(",", "")) >= 0
        assert ok == "-" or 0.0 <= float(ok) <= 100.0
    final = FINAL.search(err)
    assert final, err
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    assert int(final.group(1)) == summary["rows"] == ROWS
    assert float(final.group(3)) == pytest.approx(100.0 * summary["ok_fraction"], abs=0.06)  # 24 of 30 ok
    assert summary["status_totals"] == {"ok": 24, "http_error": 6}
    # Metrics read back after the run, and consistent with the table.
    counters = summary["metrics"]["counters"]
    assert counters["rows"] == {"ok": 24, "http_error": 6}
    assert counters["fetch"]["ok"] == 24 and counters["fetch"]["http_error"] == 6
    assert counters["bytes"]["ok"] == counters["fetch"]["bytes"] > 0
    assert summary["metrics"]["distributions"]["latency_ms"]["ok"]["count"] == 24
    assert summary["metrics"]["distributions"]["fetch"]["latency_ms"]["min"] >= 100  # the 0.12 s delay
    assert os.path.getsize(os.path.join(out, "report.html")) > 10_000


def test_no_progress_and_no_report(tmp_path, capfd):
    (tmp_path / "cc3m.tsv").write_text("a caption\tftp://example.com/a.jpg\n")
    out = str(tmp_path / "out")
    ingest.run(
        local_options(manifest=f"cc3m={tmp_path / 'cc3m.tsv'}", output=out, **{"no-progress": True, "no-report": True})
    )
    assert "progress:" not in capfd.readouterr().err
    assert not os.path.exists(os.path.join(out, "report.html"))
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["metrics"]["counters"]["rows"] == {"invalid_url": 1}


# The demo command's final progress line, plain lines and report are checked on the suite's one demo
# run (FINAL): tests/pipelines/test_ingest_e2e.py's check_demo_command_output.
