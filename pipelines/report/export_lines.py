"""The export's closing lines (pipelines.export): the books, the shards (per split with --split) and
how to load them with `webdataset` and `datasets`, from EXP/summary.json (docs/export.md)."""

import keyword

from pipelines.report import run_resources
from transforms.export.cluster_fallback import FALLBACK_MEMBERS
from transforms.io.sinks import join_path, read_json

__all__ = ["load_hint", "print_report", "report"]


def print_report(output: str) -> None:
    """Prints the closing summary of a local run from EXP/summary.json.

    Args:
        output: EXP.
    """
    print(report(read_json(join_path(output, "summary.json"))))


def _webdataset_pattern(out: str, names: list[str]) -> str:
    """EXP/00000.tar or EXP/{00000..00012}.tar (names relative to EXP, possibly NAME/00000.tar)."""
    if len(names) == 1:
        return join_path(out, names[0])
    folder, _, first = names[0].rpartition("/")
    last = names[-1].rpartition("/")[2]
    braces = f"{{{first.split('.')[0]}..{last.split('.')[0]}}}.tar"
    return join_path(out, f"{folder}/{braces}" if folder else braces)


def _variable(split: str) -> str:
    """A Python name for a split's dataset in the printed lines: the split's own name when it is
    one (`train`), else `split_` and the name with `-` as `_` (`val-1`, `2024`, `class`)."""
    if split.isidentifier() and not keyword.iskeyword(split):
        return split
    return "split_" + split.replace("-", "_")


def load_hint(summary: dict) -> str:
    """How to read the export back, for the report and docs/export.md.

    Args:
        summary: EXP/summary.json's content.

    Returns:
        One line of Python (one per split for WebDataset shards with --split).
    """
    out = summary["output"]
    names = [s["name"] for s in summary["shards"]]
    if not names:
        return "nothing to load: no row was exported"
    # why: summaries of exports without --split have no splits; an empty split has no shard to load
    splits = {name: split for name, split in (summary.get("splits") or {}).items() if split["shards"]}
    if summary["format"] == "webdataset":
        if not splits:
            pattern = _webdataset_pattern(out, names)
            return f'import webdataset as wds; ds = wds.WebDataset("{pattern}", shardshuffle=False).decode("pil")'
        patterns = {
            name: _webdataset_pattern(out, [s["name"] for s in split["shards"]]) for name, split in splits.items()
        }
        return "import webdataset as wds\n" + "\n".join(
            f'           {_variable(name)} = wds.WebDataset("{pattern}", shardshuffle=False).decode("pil")'
            for name, pattern in patterns.items()
        )
    if not splits:
        files = f'"{join_path(out, "*.parquet")}"'
    else:
        files = "{" + ", ".join(f'"{name}": "{join_path(out, name, "*.parquet")}"' for name in splits) + "}"
    return f'import datasets; ds = datasets.load_dataset("parquet", data_files={files})'


def _split_line(summary: dict) -> str:
    splits = summary.get("splits")
    if not splits:
        return ""
    each = ", ".join(
        f"{name} {split['exported']} ({split['shard_count']} shard{'' if split['shard_count'] == 1 else 's'},"
        f" {split['bytes'] / 1e6:.1f} MB)"
        for name, split in splits.items()
    )
    return f"  splits:  {each}; seed {summary['split_seed']}\n"


def report(summary: dict) -> str:
    """A few lines for the terminal: the books, the shards, how to load them.

    Args:
        summary: EXP/summary.json's content.

    Returns:
        The lines, newline-terminated.
    """
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items() if n) or "none"
    size = summary["bytes"] / 1e6
    # why: summaries written before the count have no fallback_members
    through = f", {n} through a fallback member" if (n := summary.get(FALLBACK_MEMBERS)) else ""
    return (
        f"\nexport: {summary['rows_read']} rows read, {summary['exported']} exported ({summary['format']}{through}),"
        f" skipped: {skipped}; {summary['timings']['wall_seconds']:.1f}s -> {summary['output']}\n"
        f"  shards:  {summary['shard_count']} ({size:.1f} MB)\n"
        + _split_line(summary)
        + f"  summary: {join_path(summary['output'], 'summary.json')}\n"
        f"  load:    {load_hint(summary)}\n"
        + (f"  cost:    {cost}\n" if (cost := run_resources.cost_line(summary)) else "")
    )
