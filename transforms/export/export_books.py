"""The export's books and EXP/summary.json: rows read = exported + skipped by every reason.

Public functions (each the body of one step of pipelines.export's graph):
- `summarize(config, ...)`: summary.json's content, from the counts and the written shards' records.
- `check_books(_, config, ...)`: summary.json's content once the books balance, written aside in
  the run's temporary folder; else removes the run's unpublished shards and raises
  BooksUnbalanced, before any shard is published.
- `withdraw_summary(books, config, tmp_dir)`: moves an earlier export's EXP/summary.json aside
  before the first shard is published.
- `write_summary(summary, config, tmp_dir)`: moves that summary onto EXP/summary.json, last;
  returns its path.
"""

import time

from apache_beam.io.filesystems import FileSystems

from transforms.errors import BooksUnbalanced
from transforms.export import selection
from transforms.export.cluster_fallback import FALLBACK_MEMBERS
from transforms.export.shard_writer import shard_records_in_order
from transforms.io.lease_guard import publish_held
from transforms.io.sinks import delete_tree, join_path, write_json

__all__ = ["check_books", "summarize", "write_summary"]


def summarize(config, started_at, rows_read, skipped_counts, shards):
    """summary.json's content; the books: rows read = exported + skipped by every reason."""
    shards = shard_records_in_order(shards)
    skipped = selection.count_reasons(skipped_counts)
    # why: these are found where the shard is written (non_canonical: the fallback members a
    # cluster's record carried there, cluster_fallback), the other reasons by the selection
    for reason in (selection.UNREADABLE_BLOB, selection.TOO_LARGE, selection.NON_CANONICAL):
        skipped[reason] += sum(s.get(reason, 0) for s in shards)
    exported = sum(s["samples"] for s in shards)
    elapsed = max(time.time() - started_at, 1e-9)
    resize = config.resize
    return {
        "job": "export",
        "input": config.input,
        "output": config.output,
        "format": config.export_format,
        "include": config.include,
        "resize": {
            "size": resize.size,
            "mode": resize.mode,
            "upscale": resize.upscale,
            "encode_format": resize.encode_format if resize.resizes else None,
            "encode_quality": resize.quality if resize.resizes else None,
        },
        "shard_size": config.shard_size,
        "rows_read": rows_read,
        # which table of --input was read (table_record.checked_table): the old or the new one
        # when another job rewrote it meanwhile
        "input_table": config.input_table,
        "exported": exported,
        "skipped": skipped,
        FALLBACK_MEMBERS: sum(s.get(FALLBACK_MEMBERS, 0) for s in shards),
        "books_balanced": rows_read == exported + sum(skipped.values()),
        "shards": [{"name": s["name"], "samples": s["samples"], "bytes": s["bytes"]} for s in shards],
        "shard_count": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        **_split_books(config, shards),
        "timings": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "wall_seconds": round(elapsed, 3),
            "images_per_second": round(exported / elapsed, 2),
        },
    }


def _split_books(config, shards):
    """summary.json's "split_seed", "split_fractions" and "splits" ({NAME: exported, shard_count,
    bytes, shards}) of a run with --split; nothing without it (the summary as before)."""
    if not config.splits:
        return {}
    splits = {}
    for name, fraction in config.splits:
        mine = [s for s in shards if s.get("split") == name]
        splits[name] = {
            "fraction": fraction,
            "exported": sum(s["samples"] for s in mine),
            "shard_count": len(mine),
            "bytes": sum(s["bytes"] for s in mine),
            "shards": [{"name": s["name"], "samples": s["samples"], "bytes": s["bytes"]} for s in mine],
        }
    return {"split_seed": config.split_seed, "split_fractions": dict(config.splits), "splits": splits}


def check_books(_, config, started_at, rows_read, skipped_counts, shards, tmp_dir):
    """summary.json's content once the books balance (rows read = exported + skipped), written aside
    in `tmp_dir`; else, or when it cannot be written, removes this run's unpublished shards
    (`tmp_dir`) and raises: EXP stays as it was."""
    summary = summarize(config, started_at, rows_read, skipped_counts, shards)
    table_rows = (config.input_table or {}).get("rows")
    if table_rows is not None and rows_read != table_rows:
        # why: rows the read lost (a part matched as no file) balanced the books as 0 read, exit 0
        delete_tree(tmp_dir)
        raise BooksUnbalanced(
            f"books do not balance: {rows_read} rows read of the {table_rows} rows of {config.input}'s"
            f" table; {config.output} is left as it was"
        )
    if not summary["books_balanced"]:
        delete_tree(tmp_dir)
        raise BooksUnbalanced(
            f"books do not balance: {summary['rows_read']} rows read,"
            f" {summary['exported']} exported + {sum(summary['skipped'].values())} skipped;"
            f" {config.output} is left as it was"
        )
    # Why aside and now: written after the shards were published, a full disk left EXP with this
    # run's shards under the earlier export's summary. Failing here, nothing is published yet.
    try:
        write_json(join_path(tmp_dir, "summary.json"), summary)
    except BaseException:
        delete_tree(tmp_dir)
        raise
    return summary


def withdraw_summary(books, config, tmp_dir, guard=None):
    """Moves an earlier export's EXP/summary.json aside into `tmp_dir` before any shard is
    published; returns `books` (the checked books, passed on to order the publish after this).

    Why: the shards are renamed into place one by one (on Dataflow by several workers). A run cut
    between two renames (kill -9, a worker lost, storage failing) leaves old and new shards side
    by side; the earlier summary would then vouch for a mix of two exports. Without it, an EXP with
    shards and no summary.json is an unfinished export, as everywhere in this project. Idempotent:
    a retried step finds nothing left to move. `guard` (a LeaseGuard) confirms the lease first: a
    run taken over moves nothing (it would take the new holder's summary away).
    """
    if guard is not None:
        guard.confirm([tmp_dir + "/"])
    earlier = join_path(config.output, "summary.json")
    if FileSystems.exists(earlier):
        FileSystems.rename([earlier], [join_path(tmp_dir, "summary.earlier.json")])
    return books


def write_summary(summary, config, tmp_dir, published=(), guard=None):
    """Moves the summary check_books wrote aside in `tmp_dir` onto EXP/summary.json (`published`,
    the shards renamed into place, only orders it); returns its path. A retried step finds it
    there already, as a retried shard's does. `guard`: confirmed first (lease_guard.publish_held)."""
    final = join_path(config.output, "summary.json")
    return publish_held(guard, join_path(tmp_dir, "summary.json"), final, [tmp_dir + "/"])
