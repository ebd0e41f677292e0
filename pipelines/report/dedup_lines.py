"""The dedup job's closing lines (pipelines.dedup): rows, clusters, rows replaced, with
--drop-dead the rows left out and the blobs only they used, and the run's cost, from
OUT3/summary.json (docs/duplicates.md)."""

from pipelines.report import run_resources
from transforms.clustering.dedup_books import DEAD_BLOBS
from transforms.io.sinks import join_path, read_json

__all__ = ["print_dedup_lines"]


def print_dedup_lines(out: str) -> None:
    """Prints the closing summary of a local run from OUT3/summary.json.

    Args:
        out: OUT3.
    """
    summary = read_json(join_path(out, "summary.json"))
    print(
        f"\ndedup: {summary.get('rows', '?')} rows, {summary.get('clusters', '?')} clusters,"
        f" {summary.get('replaced_rows', 0)} rows replaced by a newer version -> {out}"
    )
    print(f"  images:     {join_path(out, 'images')}/*.parquet")
    print(f"  duplicates: {join_path(out, 'duplicates')}/")
    if "drop_dead" in summary:
        dead = summary["drop_dead"]
        print(
            f"  dead:       {dead.get('dropped_dead')} rows left out as dead on {dead.get('night')}"
            f" ({dead.get('kept_other_url')} kept: another URL now, {dead.get('kept_no_verdict')} kept: no verdict,"
            f" {dead.get('kept_fetched_after_verdict', 0)} kept: fetched after the night's check);"
            f" {summary.get('blobs_only_dead')} blobs only they used: {join_path(out, DEAD_BLOBS)}"
        )
    print(f"  summary:    {join_path(out, 'summary.json')}")
    cost = run_resources.cost_line(summary)
    if cost:
        print(f"  cost:       {cost}")
