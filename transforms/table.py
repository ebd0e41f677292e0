"""The OUT/images table: reading a previous run's rows, writing this run's, retiring the old files.

Each run writes its part files under a run-unique prefix and deletes the files it found at launch
only after its own are finalised, so a re-run or resume never mixes generations, and a failed run
leaves the previous table whole.
"""
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.sinks import join_path

PART_PREFIX = "part"


def list_table_files(out_dir):
    """The Parquet files of OUT/images, sorted; [] if there is no table yet."""
    pattern = join_path(out_dir, "images", "*.parquet")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def restore_row(record):
    """A Parquet record back into a full row (columns added since it was written get defaults)."""
    row = schema.new_row(record.get("dataset"), record.get("key"))
    for name, value in record.items():
        if name in row and value is not None:
            row[name] = value
    return row


class ReadImageTable(beam.PTransform):
    """Rows of the given OUT/images Parquet files (listed at construction)."""

    def __init__(self, files):
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "Read" >> beam.io.ReadAllFromParquet()
            | "Restore" >> beam.Map(restore_row)
        )


class WriteImageTable(beam.PTransform):
    """Rows -> OUT/images/part-<run>-*.parquet with the contract's schema; returns the file names."""

    def __init__(self, out_dir, run_id, num_shards=0):
        super().__init__()
        self._out_dir = out_dir
        self._run_id = run_id
        self._num_shards = num_shards

    def expand(self, rows):
        return (
            rows
            | "PublicColumns" >> beam.Map(schema.to_parquet_record)
            | "Parquet" >> beam.io.WriteToParquet(
                join_path(self._out_dir, "images", f"{PART_PREFIX}-{self._run_id}"),
                schema.IMAGE_SCHEMA,
                file_name_suffix=".parquet",
                num_shards=self._num_shards,
                record_batch_size=1000,
            )
        )


class RetireFiles(beam.PTransform):
    """Deletes `stale` files once `written` (this run's files) exist; never one of `written`."""

    def __init__(self, stale):
        super().__init__()
        self._stale = list(stale)

    def expand(self, written):
        return (
            written.pipeline
            | "Stale" >> beam.Create(self._stale)
            | "Delete" >> beam.Map(_delete_unless_written, written=beam.pvalue.AsList(written))
        )


def _delete_unless_written(path, written):
    if path not in set(written) and FileSystems.exists(path):
        FileSystems.delete([path])
    return path
