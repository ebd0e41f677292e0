"""Published checksums joined onto manifest rows before fetching (CC12M's url/sha256/md5 list).

The hash list has as many rows as the manifest (12M), so it is joined with CoGroupByKey on the URL
rather than held in memory as a side input on every worker.

Public transforms:

- `AttachExpectedHashes(hash_list_pattern, dataset)`: rows -> the same rows, `expected_sha256` and
  `expected_md5` set on rows of `dataset` whose URL the list names.
- `ReadHashFile` (DoFn): hash-list path -> `(url, (sha256 hex, md5 hex))` per valid line.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.io.readers import open_stream
from transforms.io.manifests import md5_hex, sha256_hex

__all__ = ["parse_hash_list", "ReadHashFile", "AttachExpectedHashes"]


def parse_hash_list(binary: Iterable[bytes]) -> Iterator[tuple[str, tuple[str | None, str | None]] | None]:
    """url TAB sha256 TAB md5 lines -> (url, (sha256 hex, md5 hex)); hex or base64 accepted.

    A malformed line (no URL, no readable digest) yields None, so the caller can count it.
    """
    for raw in binary:
        fields = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace").split("\t")
        if len(fields) < 2 or not fields[0].strip():
            yield None
            continue
        sha = sha256_hex(fields[1])
        md5 = md5_hex(fields[2]) if len(fields) > 2 else None
        yield (fields[0].strip(), (sha, md5)) if (sha or md5) else None


class ReadHashFile(beam.DoFn):
    """Hash-list path -> (url, (sha256 hex, md5 hex)) per line; malformed lines are counted."""

    def setup(self):
        self._malformed = beam.metrics.Metrics.counter("hash_list", "malformed_lines")

    def process(self, path):
        with open_stream(path) as binary:
            for entry in parse_hash_list(binary):
                if entry is None:
                    self._malformed.inc()
                else:
                    yield entry


class AttachExpectedHashes(beam.PTransform):
    """Sets expected_sha256 / expected_md5 on rows of `dataset` whose URL is in the hash list."""

    def __init__(self, hash_list_pattern: str, dataset: str = "cc12m") -> None:
        super().__init__()
        self._paths = sorted(m.path for r in FileSystems.match([hash_list_pattern]) for m in r.metadata_list)
        if not self._paths:
            raise ValueError(f"no file matches --cc12m-hashes {hash_list_pattern}")
        self._dataset = dataset

    def expand(self, rows):
        dataset = self._dataset
        tagged = rows | "SplitByDataset" >> beam.Partition(
            lambda row, _: 0 if row["dataset"] == dataset and not row.get("status") else 1, 2)
        hashes = (
            rows.pipeline
            | "HashFiles" >> beam.Create(self._paths)
            | "ReadHashes" >> beam.ParDo(ReadHashFile())
        )
        joined = (
            {"rows": tagged[0] | "KeyByUrl" >> beam.Map(lambda row: (row["url"], row)), "hashes": hashes}
            | "JoinHashes" >> beam.CoGroupByKey()
            | "SetExpected" >> beam.FlatMap(_set_expected)
        )
        return (joined, tagged[1]) | "Rejoin" >> beam.Flatten()


def _set_expected(item):
    _url, grouped = item
    hashes = list(grouped["hashes"])
    for row in grouped["rows"]:
        if hashes:
            # Several entries for one URL: the first wins; they describe the same file.
            row["expected_sha256"], row["expected_md5"] = hashes[0]
        yield row
