"""What every reader of an ingest's table must do with a table that is not the one recorded.

`one_line(capsys, job)`: the job's single stderr line (no traceback). `assert_readers_refuse`:
export --input, dedup --input and refresh --snapshot of OUT each exit 2 with one line holding a
given fragment, and write nothing. `read_rows(out)`, `read_records(out)`, `summary(out)`: a local
OUT's table rows, its duplicate cluster records and its summary.json.
"""

import glob
import json
import os

import pyarrow.parquet as pq

from pipelines import dedup, export, refresh
from tests.conftest import local_options

LOOPBACK = "127.0.0.1/32"


def one_line(capsys, job):
    """The one line `job` wrote to stderr; Beam's own warnings (WriteToText replacing clusters-*)
    may come too, never a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{job}: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def night_options(tmp_path, snapshot, date, **extra):
    """(Beam options of the refresh of night `date` into tmp_path/refresh-<date> with the history
    tmp_path/history, loopback allowed, one try a URL; `extra` adds or overrides), REFRESH_OUT)."""
    out = str(tmp_path / f"refresh-{date}")
    args = {
        "snapshot": snapshot,
        "output": out,
        "history": str(tmp_path / "history"),
        "night": date,
        "allow-network": LOOPBACK,
        "timeout": 5,
        "retries": 0,
        **extra,
    }
    return local_options(**args), out


def night_status(tmp_path, snapshot, date, **extra):
    """Runs the refresh of night `date` (night_options) and returns its status rows by key."""
    import pyarrow.dataset as ds  # noqa: PLC0415 (only the refresh tests read status tables)

    options, out = night_options(tmp_path, snapshot, date, **extra)
    refresh.run(options)
    rows = ds.dataset(os.path.join(out, "status"), format="parquet").to_table().to_pylist()
    return {r["key"]: r for r in rows}


def run_refresh(snapshots, output):
    return refresh.main(
        local_options(snapshot=snapshots, output=output, **{"allow-network": LOOPBACK, "retries": 0, "timeout": 5})
    )


def assert_readers_refuse(out, where, capsys, fragment):
    """export, dedup and refresh of `out` (outputs under `where`): exit 2, one line with
    `fragment` (the export's names summary.json too), nothing written."""
    capsys.readouterr()
    exp, out3, fresh = where / "exp", where / "out3", where / "refresh"
    assert export.main(local_options(input=out, output=str(exp), format="webdataset")) == 2
    line = one_line(capsys, "export")
    assert fragment in line and "summary.json" in line, line
    assert not exp.exists()
    assert dedup.main(local_options(input=out, output=str(out3))) == 2
    assert fragment in one_line(capsys, "dedup")
    assert not os.path.exists(os.path.join(out3, "images"))
    assert run_refresh([out], str(fresh)) == 2
    assert fragment in one_line(capsys, "refresh")
    assert not os.path.exists(os.path.join(fresh, "status"))


def read_rows(out):
    """Every row of a local OUT's table (images/*.parquet), as dicts."""
    return pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet"))).to_pylist()


def read_records(out):
    """Every cluster record of a local OUT (duplicates/clusters-*.jsonl)."""
    paths = glob.glob(os.path.join(out, "duplicates", "clusters-*.jsonl"))
    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def summary(out):
    """A local OUT's summary.json."""
    with open(os.path.join(out, "summary.json")) as handle:
        return json.load(handle)
