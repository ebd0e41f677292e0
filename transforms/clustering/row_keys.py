"""The ingest's check that its keys are distinct: rows written = distinct keys (docs/integrity.md).

CONTRACT.md promises `key` unique across the run, and every later job leans on it (dedup keeps
the newest row of a key, refresh keys its history by key, --resume skips keys done). The books
count rows in and out; this counts distinct keys, cheaply at 12M rows: each row's key goes as a
12-byte digest through the shuffle dedup's key records take already (`clusters._KeyRecords`,
shard kind "r"), and each shard counts its distinct digests with one numpy sort. Only when some
digest comes twice are the written part files read again (key and source columns only) to name
the key; a chance collision of two keys' digests (odds ~1e-13 among 1e8 keys) is told apart there
by the text and counts as two keys.

- `row_key_digests(keys)`: the digest records of a batch of keys, and their shards.
- `count_row_keys(records)`: one shard's (distinct digests, doubled digests, the first few of them).
- `KeyBooks(counts, files)`: the shards' counts and the written part files -> one dict for the
  books (`books.balance(keys=...)`).
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

__all__ = ["ROW_KEY_RECORD", "KEYS_LISTED", "row_key_digests", "count_row_keys", "KeyBooks"]

ROW_KEY_RECORD = np.dtype("S12")
KEYS_LISTED = 5  # doubled keys named in summary.json's books (all are counted)


def _digest(key: str | None) -> bytes:
    text = "\x00" if key is None else "\x01" + key  # why: a null key is not the key "" (both doubled alike)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def row_key_digests(keys: Iterable[str | None], shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(ROW_KEY_RECORD array, shard of each record) of a batch of row keys.

    Args:
        keys: the rows' `key` values.
        shards: how many shards the records spread over (by their first byte: digests are uniform).
    Returns:
        The digests and their shard numbers, one each per key.
    """
    records = np.array([_digest(k) for k in keys], dtype=ROW_KEY_RECORD)
    first = np.frombuffer(records.tobytes(), np.uint8).reshape(-1, ROW_KEY_RECORD.itemsize)[:, 0]
    return records, first.astype(np.int64) % shards


def count_row_keys(records: np.ndarray) -> tuple[int, int, list[bytes]]:
    """One shard's digests -> (how many distinct, how many held by several rows, the first
    KEYS_LISTED of those).

    Args:
        records: ROW_KEY_RECORD array of the shard.
    Returns:
        (distinct count, doubled count, the smallest doubled digests as bytes).
    """
    distinct, counts = np.unique(records, return_counts=True)  # sorted: the first are the smallest
    doubled = distinct[counts > 1]
    # why only a few: a bug doubling every row must not make millions of digests a side input
    listed = [bytes(d).ljust(ROW_KEY_RECORD.itemsize, b"\x00") for d in doubled[:KEYS_LISTED].tolist()]
    return len(distinct), len(doubled), listed


def _rows_of_digests(path: str, doubled: list[bytes]) -> Iterator[tuple[str | None, str]]:
    """(key, where) of the rows of one written part file whose key digest is in `doubled`."""
    if not doubled:
        return
    from transforms.io.checked_parquet import table_batches  # only workers read the table

    wanted = frozenset(doubled)
    for batch in table_batches(path, ["key", "source_file", "source_line"]):
        for row in batch.to_pylist():
            if _digest(row["key"]) in wanted:
                line = row["source_line"]
                yield row["key"], f"{row['source_file'] or '(no source file)'}" + (f" line {line}" if line else "")


def _key_books(counts: list[tuple[int, int, list[bytes]]], found: list[tuple[str | None, str]]) -> dict:
    """The shards' counts and the rows of listed doubled digests -> {"distinct", "doubled_keys", "doubled"}."""
    distinct = sum(n for n, _, _ in counts)
    doubled_keys = sum(n for _, n, _ in counts)
    where = collections.defaultdict(list)
    for key, place in found:
        where[key].append(place)
    doubled = sorted(
        ((key, sorted(places)) for key, places in where.items() if len(places) > 1), key=lambda item: item[0] or ""
    )
    doubled_digests = {_digest(key) for key, _ in doubled}
    for digest, keys in collections.Counter(_digest(key) for key in where).items():
        if keys > 1:  # a digest shared by several keys by chance: that many keys
            distinct += keys - 1
            doubled_keys -= digest not in doubled_digests
    return {
        "distinct": distinct,
        "doubled_keys": doubled_keys,
        "doubled": [{"key": key, "rows": len(places), "where": places[:3]} for key, places in doubled[:KEYS_LISTED]],
    }


class KeyBooks(beam.PTransform):
    """The shards' (distinct, doubled, listed doubled digests) -> one dict: {"distinct": keys, "doubled_keys": n,
    "doubled": [{"key", "rows", "where": ["file line N", ...]}, ...] (the first KEYS_LISTED)}.

    Args:
        files: the written part files (FinalizeTable's names), read again only for doubled digests.
    """

    def __init__(self, files: beam.PCollection) -> None:
        super().__init__()
        self._files = files

    def expand(self, counts):
        doubled = counts | "DoubledDigests" >> beam.FlatMap(lambda count: count[2])
        found = self._files | "RowsOfDoubled" >> beam.FlatMap(_rows_of_digests, doubled=beam.pvalue.AsList(doubled))
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "KeyBooks"
            >> beam.Map(
                lambda _, counts, found: _key_books(counts, found),
                counts=beam.pvalue.AsList(counts),
                found=beam.pvalue.AsList(found),
            )
        )
