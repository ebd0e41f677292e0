"""Which version of each key the standalone dedup job keeps: its first pass over the tables.

Per row a 49-byte record (key digest, fetched_at, input index, file id, row number, URL digest,
whether the row holds a picture), grouped by key digest (through `spill.GroupRecords`, on disk in
local runs); a key held by several inputs keeps its newest version with a picture, else its newest
(`newest_order`), the others are listed per file as rows to skip.

A version is the same record fetched again: it has the same URL. CC3M and CC12M keys are
manifest line numbers, so two slices of one manifest ingested apart (the first lines, then the
next) both hold `cc3m:1`, `cc3m:2`, ... for different URLs; taking one for the other's newer
version dropped a distinct image per key behind exit 0 ("replaced"). So a key record of a
line-keyed dataset carries an 8-byte digest of its row's URL, and a replaced row whose URL no kept
row of its key has is counted; any such key stops the job with one line (exit 2) before a row is
written. (An ID-keyed row's newer version may have another URL: its ID names it.)

- `NewestRows(inputs, spill_dir)`: table files -> the rows to skip, and the books' counts.
- `newest_order(records)`: the order that puts each key's kept version last.
- `url_digests(urls, datasets)`: the 8 bytes each key record holds for its URL.
- `replaced_elsewhere(run, inputs, older, urls)`: one key shard's collisions, tagged COLLIDED.
- `KeyCollision(collided, inputs)`: the skip lists, passed on once no key collides; else BadInput.
"""

from __future__ import annotations

import hashlib
import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms import schema
from transforms.clustering.spill import GroupRecords, split_by
from transforms.clustering.table_dedup import file_batches, file_id
from transforms.errors import BadInput
from transforms.io.manifests import LINE_KEYED

__all__ = [
    "COLLIDED",
    "KEY_RECORD",
    "KEY_SHARDS",
    "key_shards",
    "KeyCollision",
    "NewestRows",
    "key_digest",
    "newest_order",
    "replaced_elsewhere",
    "stamps",
    "url_digest",
    "url_digests",
]

COLLIDED = "collided"
KEY_RECORD = np.dtype(
    [("key", "S16"), ("stamp", "<i8"), ("input", "<i4"), ("file", "<i8"), ("row", "<u4"), ("url", "S8"), ("ok", "u1")]
)
KEY_SHARDS = 256
NO_STAMP = np.iinfo(np.int64).min  # a row without fetched_at counts as the oldest


def stamps(column: pa.Array, missing: int = NO_STAMP) -> np.ndarray:
    """A timestamp column as int64 microseconds since the epoch (UTC).

    Args:
        column: a timestamp (or null) column of a record batch.
        missing: what a null becomes (default NO_STAMP: the oldest).
    Returns:
        One int64 per row.
    """
    micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return micros.fill_null(missing).to_numpy(zero_copy_only=False)


def newest_order(records: np.ndarray) -> np.ndarray:
    """Indices sorting key records by key, then from oldest to newest version.

    Kept: a version with a picture (status ok) before one without, then the latest fetched_at (none
    counts as oldest), then the input listed last, then the larger file id and row number (any
    fixed rule: one input should not hold a key twice). Why a picture first: a re-ingest whose
    fetch of a URL hit a 503, a timeout or a 404 replaced the picture an earlier ingest holds,
    and the dataset lost it behind exit 0; whether a URL is dead is the refresh's call
    (dedup --drop-dead), on its own evidence.

    Args:
        records: KEY_RECORD array.
    Returns:
        The sorting indices (the last of each key's run is the row kept).
    """
    return np.lexsort(
        (records["row"], records["file"], records["input"], records["stamp"], records["ok"], records["key"])
    )


def url_digests(urls: list[str | None], datasets: list[str | None]) -> list[bytes]:
    """The 8 bytes each key record holds for its row's URL as written (None and "" apart): a
    digest for rows of line-keyed datasets, nothing for the others. An ID (an Open Images
    ImageID) names its record whatever its URL, so a newer version may have moved; a line
    number names a record only within its manifest.

    Args:
        urls, datasets: the rows' url and dataset columns.
    Returns:
        One value per row, for KEY_RECORD's "url" field.
    """
    return [url_digest(u) if d in LINE_KEYED else b"" for u, d in zip(urls, datasets, strict=True)]


def url_digest(url: str | None) -> bytes:
    """8 bytes naming a URL as written (None and "" apart).

    Args:
        url: the URL, or None.
    Returns:
        The digest.
    """
    return hashlib.blake2b(
        b"\x00" if url is None else b"\x01" + url.encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()


def key_digest(key: str) -> bytes:
    """16 bytes naming a key (the key records' "key").

    Args:
        key: the row's key.
    Returns:
        The digest.
    """
    return hashlib.blake2b(str(key).encode("utf-8"), digest_size=16).digest()


def key_shards(records: np.ndarray) -> typing.Iterator[tuple[int, np.ndarray]]:
    """(key shard, the records of that shard) of records whose "key" is a key_digest: the first
    byte of the digest, modulo KEY_SHARDS, so that every record of one key meets in one shard.

    Args:
        records: a structured array with a 16-byte "key" field.
    Returns:
        An iterator of (shard, records).
    """
    shard = np.ascontiguousarray(records["key"]).view(np.uint8).reshape(-1, 16)[:, 0]
    for s, idx in split_by(shard.astype(np.int64) % KEY_SHARDS):
        yield s, records[idx]


def replaced_elsewhere(run, inputs, older, urls):
    """Tagged COLLIDED: (replaced row's input, kept row's input, keys) for the keys of one shard
    whose replaced rows have a URL that no kept row of the key has.

    Args:
        run: each sorted key record's key run (_Newest); inputs: its input index;
            older: whether it is replaced; urls: its URL digest (KEY_RECORD "url", url_digests).
    Yields:
        beam.pvalue.TaggedOutput(COLLIDED, (loser input, winner input, keys)), one per pair.
    """
    if not older.any():
        return
    lost_runs = np.unique(run[older])
    kept = ~older & np.isin(run, lost_runs)
    url_ids = np.ascontiguousarray(urls).view("<u8")
    kept_pairs = set(zip(run[kept].tolist(), url_ids[kept].tolist(), strict=True))
    winner_input = {}
    for r, i in zip(run[kept].tolist(), inputs[kept].tolist(), strict=True):
        winner_input.setdefault(r, i)
    pairs: dict[tuple[int, int], set] = {}
    for r, u, i in zip(run[older].tolist(), url_ids[older].tolist(), inputs[older].tolist(), strict=True):
        if (r, u) not in kept_pairs:
            pairs.setdefault((i, winner_input[r]), set()).add(r)
    for (loser, winner), runs in sorted(pairs.items()):
        yield beam.pvalue.TaggedOutput(COLLIDED, (loser, winner, len(runs)))


class KeyCollision(beam.PTransform):
    """NewestRows' skip lists in, the same out once every key shard's collisions are counted; or
    BadInput (exit 2) when some key names different rows in two inputs: replacing one by the
    other would drop a record with exit 0, and keeping both would give the table a key twice.

    Args:
        collided: the COLLIDED output of the key shards.
        inputs: the --input paths, in order (the records' input index is a position in it).
    """

    def __init__(self, collided: beam.PCollection, inputs: list[str]) -> None:
        super().__init__()
        self._collided = collided
        self._inputs = list(inputs)

    def expand(self, skip):
        checked = (
            skip.pipeline
            | "Once" >> beam.Create([None])
            | "Refuse" >> beam.Map(_refuse_collisions, beam.pvalue.AsList(self._collided), inputs=self._inputs)
        )
        return skip | "AfterCheck" >> beam.Map(lambda lists, _checked: lists, beam.pvalue.AsSingleton(checked))


def _refuse_collisions(_, collided, inputs):
    totals: dict[tuple[int, int], int] = {}
    for loser, winner, keys in collided:
        totals[(loser, winner)] = totals.get((loser, winner), 0) + keys
    if not totals:
        return None
    (loser, winner), keys = max(totals.items(), key=lambda item: item[1])
    more = sum(totals.values()) - keys
    raise BadInput(
        f"--input {inputs[winner]} and --input {inputs[loser]} hold {keys} keys under which they have rows"
        f" of different URLs{f' (and {more} more keys between other inputs)' if more else ''}: those are"
        " different records, not two versions of one. CC3M and CC12M keys are manifest line numbers, so"
        " two slices of a manifest ingested apart share keys: ingest the slices in one run"
        " (--manifest cc3m=part-a.tsv --manifest cc3m=part-b.tsv keys each row by its file), then dedup that;"
        " if one is a re-ingest of an edited manifest, dedup it without the older output"
    )


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _KeyRecords(beam.DoFn):
    """(input index, path) -> (key shard, KEY_RECORD array) for every row of the file; tagged
    `rows_in`: (input index, rows read) per batch, the books' "in" side."""

    ROWS_IN = "rows_in"

    def process(self, element):
        index, path = element
        fid = np.int64(file_id(path))
        for first, batch in file_batches(path, ["key", "fetched_at", "url", "dataset", "status"]):
            n = batch.num_rows
            yield beam.pvalue.TaggedOutput(self.ROWS_IN, (index, n))
            records = np.empty(n, dtype=KEY_RECORD)
            records["key"] = [key_digest(k) for k in batch.column(0).to_pylist()]
            records["stamp"] = stamps(batch.column(1))
            records["input"], records["file"] = index, fid
            records["row"] = np.arange(first, first + n, dtype=np.uint32)
            records["url"] = url_digests(batch.column(2).to_pylist(), batch.column(3).to_pylist())
            records["ok"] = [status == schema.OK for status in batch.column(4).to_pylist()]
            yield from key_shards(records)


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _Newest(beam.DoFn):
    """(key shard, [KEY_RECORD arrays]) -> (file id, row numbers to skip); tagged `replaced`:
    how many rows of the shard lost to a newer version of their key; tagged `repeated`: how many
    keys of the shard some input holds more than once.

    Only versions from different inputs replace each other: the input of a key's newest version
    keeps all its rows of that key (an output of an earlier ingest whose keys collided holds
    distinct records under one key), the other inputs' rows of it are replaced; tagged
    `collided`: those whose URL no kept row of the key has (replaced_elsewhere).
    """

    REPLACED = "replaced"
    REPEATED = "repeated"
    COLLIDED = COLLIDED

    def process(self, element):
        _shard, parts = element
        records = np.concatenate(list(parts))
        if not len(records):
            return
        records = records[newest_order(records)]
        keys = records["key"]
        starts = np.ones(len(records), dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]
        run = np.cumsum(starts) - 1  # each record's key run
        ends = np.append(np.flatnonzero(starts)[1:], len(records)) - 1  # the newest of each run
        inputs = records["input"].astype(np.int64)
        older = inputs != inputs[ends][run]  # not of the winning input: replaced
        pairs, counts = np.unique(run * (int(inputs.max()) + 1) + inputs, return_counts=True)
        repeated = len(np.unique(pairs[counts > 1] // (int(inputs.max()) + 1)))
        if repeated:
            yield beam.pvalue.TaggedOutput(self.REPEATED, repeated)
        yield from replaced_elsewhere(run, inputs, older, records["url"])
        losers = records[older]
        if len(losers):
            beam.metrics.Metrics.counter("dedup", "replaced_rows").inc(len(losers))
            yield beam.pvalue.TaggedOutput(self.REPLACED, len(losers))
            for fid, idx in split_by(losers["file"]):
                yield fid, np.sort(losers["row"][idx])


class NewestRows(beam.PTransform):
    """(input index, path) of table files -> {"skip": (file id, row numbers) of the rows a newer
    version of their key replaces, "replaced": per-shard counts of those rows (sum them),
    "repeated": per-shard counts of keys an input holds twice (sum them), "rows_in": (input
    index, rows read) per batch (sum per input)}.

    inputs: the --input paths, in order (for KeyCollision's message).
    spill_dir: local directory the key records are grouped through (local runs); None: the
    runner's GroupByKey.
    """

    def __init__(self, inputs, spill_dir=None):
        super().__init__()
        self._inputs = list(inputs)
        self._spill_dir = spill_dir

    def expand(self, files):
        keyed = files | "KeyRecords" >> beam.ParDo(_KeyRecords()).with_outputs(_KeyRecords.ROWS_IN, main="records")
        newest = (
            keyed.records
            | "GroupKeys" >> GroupRecords(self._spill_dir, dtype_of=lambda _key: KEY_RECORD)
            | "Newest"
            >> beam.ParDo(_Newest()).with_outputs(_Newest.REPLACED, _Newest.REPEATED, _Newest.COLLIDED, main="skip")
        )
        return {
            # why: every reader of the skip lists waits for the check: a refused run writes nothing
            "skip": newest.skip | "KeyCollision" >> KeyCollision(newest[_Newest.COLLIDED], self._inputs),
            "replaced": newest[_Newest.REPLACED],
            "repeated": newest[_Newest.REPEATED],
            "rows_in": keyed[_KeyRecords.ROWS_IN],
        }
