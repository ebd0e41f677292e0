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

from transforms.errors import BadInput
from transforms.io.file_matches import matched_files
from transforms.io.manifests import md5_hex, sha256_hex
from transforms.io.readers import open_stream
from transforms.io.text_forms import split_lines, tsv_record

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
            for entry in parse_hash_list(split_lines(binary, tsv_record)):  # CR line ends too
                if entry is None:
                    self._malformed.inc()
                else:
                    yield entry


HASH_CONFLICT_RULE = (
    "entries of one URL that disagree on sha256 or md5 give no expected hash; agreeing entries are merged"
)


class AttachExpectedHashes(beam.PTransform):
    """Sets expected_sha256 / expected_md5 on rows of `dataset` whose URL is in the hash list.

    Several entries for one URL (a list concatenated from two sources): entries that agree, a
    field left blank agreeing with any value, are merged; entries that disagree on the sha256 or
    the md5 are a conflict: the URL's rows get no expected hash (nothing says which entry is right,
    and a wrong one would fail a good image), and the URL is counted. The same whatever order the
    entries arrive in. with_conflicts: return {"rows", "conflicts"} (one URL per conflict).
    """

    def __init__(self, hash_list_pattern, dataset="cc12m", with_conflicts=False):
        super().__init__()
        self._paths = matched_files(hash_list_pattern)
        if not self._paths:
            raise BadInput(f"no file matches --cc12m-hashes {hash_list_pattern}")
        self._dataset = dataset
        self._with_conflicts = with_conflicts

    def expand(self, rows):
        dataset = self._dataset
        tagged = rows | "SplitByDataset" >> beam.Partition(
            lambda row, _: 0 if row["dataset"] == dataset and not row.get("status") else 1, 2
        )
        hashes = rows.pipeline | "HashFiles" >> beam.Create(self._paths) | "ReadHashes" >> beam.ParDo(ReadHashFile())
        joined = (
            {"rows": tagged[0] | "KeyByUrl" >> beam.Map(lambda row: (row["url"], row)), "hashes": hashes}
            | "JoinHashes" >> beam.CoGroupByKey()
            | "SetExpected" >> beam.ParDo(_SetExpected()).with_outputs(_SetExpected.CONFLICTS, main="rows")
        )
        rows = (joined.rows, tagged[1]) | "Rejoin" >> beam.Flatten()
        if not self._with_conflicts:
            return rows
        return {"rows": rows, "conflicts": joined[_SetExpected.CONFLICTS]}


def merge_hash_entries(entries):
    """[(sha256, md5)] of one URL -> ((sha256, md5), conflict?); order-independent.

    Blank fields agree with anything; two different non-blank values of a field are a conflict,
    which gives (None, None).
    """
    shas = {sha for sha, _ in entries if sha}
    md5s = {md5 for _, md5 in entries if md5}
    if len(shas) > 1 or len(md5s) > 1:
        return (None, None), True
    return (next(iter(shas), None), next(iter(md5s), None)), False


class _SetExpected(beam.DoFn):
    CONFLICTS = "conflicts"

    def process(self, item):
        url, grouped = item
        entries = list(grouped["hashes"])
        rows = grouped["rows"]
        if not entries:
            yield from rows
            return
        (sha, md5), conflict = merge_hash_entries(entries)
        if conflict:
            beam.metrics.Metrics.counter("hash_list", "conflicting_urls").inc()
            yield beam.pvalue.TaggedOutput(self.CONFLICTS, url)
        for row in rows:
            row["expected_sha256"], row["expected_md5"] = sha, md5
            yield row
