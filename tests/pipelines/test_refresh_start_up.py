"""The refresh's start-up reads a snapshot's Parquet footers as few times as it can: a 12M-row
snapshot on gs:// has hundreds of part files, each footer a request. Before, each part was opened
five times before the pipeline ran (the table's columns, the table record's check, rows twice, the
night check); now twice (the columns, then one footer_facts read whose facts serve the rest).
"""

import collections
import datetime
import os
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import jpeg
from tests.conftest import local_options
from tests.synthetic_out import fetched_ok_row
from transforms import schema

PARTS = 4


class _Started(Exception):
    """Raised where the run would take REFRESH_OUT's lease: start-up is over."""


def snapshot_of_parts(directory, fetched_at):
    os.makedirs(os.path.join(directory, "images"))
    body = jpeg(1)
    for part in range(PARTS):
        rows = [
            fetched_ok_row(f"cc3m:{part * 10 + i}", f"http://127.0.0.1:9/{part}/{i}.jpg", body, fetched_at=fetched_at)
            for i in range(3)
        ]
        table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
        pq.write_table(table, os.path.join(directory, "images", f"part-{part:05d}.parquet"))
    return directory


def start_up_opens(tmp_path, night):
    """{part file: times opened} by the refresh's start-up of `night`."""
    snapshot = snapshot_of_parts(
        str(tmp_path / "snapshot"), datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    )
    opens = collections.Counter()
    real_open = FileSystems.open

    def counting_open(path, *args, **kwargs):
        if str(path).endswith(".parquet"):
            opens[os.path.basename(str(path))] += 1
        return real_open(path, *args, **kwargs)

    def started(*_args, **_kwargs):
        raise _Started

    options = local_options(
        snapshot=snapshot, output=str(tmp_path / "refresh"), night=night, **{"allow-network": "127.0.0.1/32"}
    )
    with (
        mock.patch.object(FileSystems, "open", side_effect=counting_open),
        mock.patch.object(refresh_job.job_runner, "leased_output", side_effect=started),
        pytest.raises(_Started),
    ):
        refresh_job.run(options)
    return opens


def test_start_up_reads_each_part_footer_at_most_twice(tmp_path):
    opens = start_up_opens(tmp_path, "2030-02-01")
    assert len(opens) == PARTS
    # why "at most twice", and one more for the first part: the columns the reader asks for
    assert sum(opens.values()) <= 2 * PARTS + 1, dict(opens)
