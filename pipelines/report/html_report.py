"""OUT/report.html: one self-contained page a person would rather look at than summary.json.

    python -m pipelines.report OUT [--top-hosts N]      # OUT local or gs://

Built from OUT/summary.json and the Parquet table (only the few columns it plots, streamed batch by
batch, so a 12M-row table costs a pass, not its size in memory). Plots are drawn with matplotlib's
Agg/SVG backend and embedded as data: URIs, so the page loads nothing from anywhere: it can be
mailed, archived next to the data, or opened from a bucket.

Why matplotlib rather than hand-written SVG: log-scaled histograms, stacked bars, heatmaps with
legends and readable ticks are a lot of fiddly code to own; matplotlib is the well-kept standard,
renders headless, and SVG output (glyphs as paths) looks the same in every browser.

Public: `write_report(out)` (and `try_write_report`, its never-failing form for the end of a job),
`read_table_stats` / `TableStats` (one pass over the table), `render_html`, the `plot_*` functions
(each returns a base64 SVG, or None when there is nothing to plot) and `main` (the command line).
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import html
import io
import itertools
import json
import sys
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator, PercentFormatter

from pipelines.report.progress_line import human_bytes
from transforms import schema
from transforms.io.checked_parquet import open_table_file, table_batches
from transforms.io.sinks import join_path, read_json

__all__ = [
    "REPORT_NAME",
    "STATUS_COLORS",
    "TableStats",
    "parquet_files",
    "read_table_stats",
    "plot_status_by_dataset",
    "plot_hosts",
    "plot_stacked_histogram",
    "plot_latency",
    "plot_sizes",
    "plot_pair_matrix",
    "plot_named_values",
    "render_html",
    "write_report",
    "try_write_report",
    "main",
]

REPORT_NAME = "report.html"
COLUMNS = ("dataset", "status", "url", "error", "size_bytes", "fetch_ms", "cluster_id", "is_canonical")
# Fixed log-spaced bins: per-batch histograms add up exactly without a first pass for the range.
SIZE_EDGES = np.logspace(1, 9, 8 * 4 + 1)  # 10 B .. 1 GB, 4 bins a decade
LATENCY_EDGES = np.logspace(0, 6, 6 * 4 + 1)  # 1 ms .. 1000 s
MAX_DISTINCT = 200_000  # cap on distinct hosts / error texts tracked
HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]+)"

STATUS_COLORS = {
    schema.OK: "#2e9e48",
    schema.HTTP_ERROR: "#d1493f",
    schema.TIMEOUT: "#f0a030",
    schema.CONNECTION_ERROR: "#8c5bb3",
    schema.INVALID_URL: "#7f7f7f",
    schema.BLOCKED: "#3a3a3a",
    schema.OPTED_OUT: "#3f88c5",
    schema.NOT_IMAGE: "#e377c2",
    schema.TOO_LARGE: "#b07a3b",
    schema.DECODE_ERROR: "#bcbd22",
    schema.HASH_MISMATCH: "#17becf",
}
OTHER_COLOR = "#c7c7c7"
HIDDEN_COUNTER_NAMESPACES = {"rows_by_dataset"}  # the status table above, again; kept in summary.json
REJECTED_COLOR = "#d98c5f"


# --- reading -------------------------------------------------------------------------------------


class TableStats:
    """Aggregates of the images table, accumulated one record batch at a time."""

    def __init__(self) -> None:
        self.rows = 0
        # dataset -> status -> n
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.hosts: dict[str, list[int]] = {}  # host -> [rows, ok]
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()  # (status, error) -> n
        self.size_ok = np.zeros(len(SIZE_EDGES) - 1, dtype=np.int64)
        self.size_rejected = np.zeros(len(SIZE_EDGES) - 1, dtype=np.int64)
        self.latency: dict[str, np.ndarray] = collections.defaultdict(
            lambda: np.zeros(len(LATENCY_EDGES) - 1, dtype=np.int64)
        )
        # cluster_id -> dataset -> n
        self.clusters: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.non_canonical = 0

    def add_batch(self, batch):
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        if not n:
            return
        self.rows += n
        names = set(table.column_names)
        dataset = table.column("dataset") if "dataset" in names else pa.nulls(n, pa.string())
        status = table.column("status") if "status" in names else pa.nulls(n, pa.string())
        dataset = pc.fill_null(dataset, "?")
        status = pc.fill_null(status, "?")
        for item in pa.table({"d": dataset, "s": status}).group_by(["d", "s"]).aggregate([("s", "count")]).to_pylist():
            self.counts[item["d"]][item["s"]] += item["s_count"]
        is_ok = pc.equal(status, schema.OK)
        if "url" in names:
            self._add_hosts(table.column("url"), is_ok)
        if "error" in names:
            self._add_errors(status, table.column("error"))
        if "size_bytes" in names:
            sizes = table.column("size_bytes")
            self.size_ok += _histogram(pc.filter(sizes, is_ok), SIZE_EDGES)
            self.size_rejected += _histogram(pc.filter(sizes, pc.invert(is_ok)), SIZE_EDGES)
        if "fetch_ms" in names:
            latency = table.column("fetch_ms")
            for value in pc.unique(status).to_pylist():
                self.latency[value] += _histogram(pc.filter(latency, pc.equal(status, value)), LATENCY_EDGES)
        if "cluster_id" in names:
            self._add_clusters(table.column("cluster_id"), dataset)
        if "is_canonical" in names:
            self.non_canonical += int(pc.sum(pc.equal(table.column("is_canonical"), False)).as_py() or 0)

    def _add_hosts(self, urls, is_ok):
        found = pc.extract_regex(pc.fill_null(urls, ""), HOST_PATTERN)
        host = pc.fill_null(pc.utf8_lower(pc.struct_field(found, "host")), "(no host)")
        grouped = (
            pa.table({"h": host, "ok": pc.cast(is_ok, pa.int64())})
            .group_by("h")
            .aggregate([("ok", "sum"), ("ok", "count")])
        )
        for item in grouped.to_pylist():
            entry = self.hosts.get(item["h"])
            if entry is None:
                if len(self.hosts) >= MAX_DISTINCT:
                    continue
                entry = self.hosts[item["h"]] = [0, 0]
            entry[0] += item["ok_count"]
            entry[1] += item["ok_sum"]

    def _add_errors(self, status, errors):
        mask = pc.is_valid(errors)
        grouped = (
            pa.table({"s": pc.filter(status, mask), "e": pc.filter(errors, mask)})
            .group_by(["s", "e"])
            .aggregate([("e", "count")])
        )
        for item in grouped.to_pylist():
            key = (item["s"], item["e"])
            if key in self.errors or len(self.errors) < MAX_DISTINCT:
                self.errors[key] += item["e_count"]

    def _add_clusters(self, cluster_ids, dataset):
        mask = pc.is_valid(cluster_ids)
        if not pc.any(mask).as_py():
            return
        grouped = (
            pa.table({"c": pc.filter(cluster_ids, mask), "d": pc.filter(dataset, mask)})
            .group_by(["c", "d"])
            .aggregate([("d", "count")])
        )
        for item in grouped.to_pylist():
            self.clusters[item["c"]][item["d"]] += item["d_count"]

    def duplicate_pairs(self):
        """{(dataset a, dataset b): pairs of rows in the same cluster}, a <= b; a == b is within."""
        pairs = collections.Counter()
        for members in self.clusters.values():
            names = sorted(members)
            for i, a in enumerate(names):
                pairs[(a, a)] += members[a] * (members[a] - 1) // 2
                for b in names[i + 1 :]:
                    pairs[(a, b)] += members[a] * members[b]
        return {key: value for key, value in pairs.items() if value}

    def cluster_sizes(self):
        return collections.Counter(sum(members.values()) for members in self.clusters.values())


def _histogram(values, edges):
    array = values.to_numpy(zero_copy_only=False) if isinstance(values, (pa.Array, pa.ChunkedArray)) else values
    array = np.asarray(array, dtype="float64")
    array = array[~np.isnan(array)]
    if not array.size:
        return np.zeros(len(edges) - 1, dtype=np.int64)
    # Out-of-range values land in the end bins rather than vanish.
    array = np.clip(array, edges[0], edges[-1] * 0.999999)
    return np.histogram(array, bins=edges)[0].astype(np.int64)


def parquet_files(out: str) -> list[str]:
    pattern = join_path(out, "images", "*.parquet")
    return sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)


def read_table_stats(out: str, batch_size: int = 65536) -> TableStats:
    stats = TableStats()
    for path in parquet_files(out):
        parquet = open_table_file(path)
        columns = [c for c in COLUMNS if c in set(parquet.schema_arrow.names)]
        for batch in table_batches(path, columns, batch_size=batch_size, parquet=parquet):
            stats.add_batch(batch)
    return stats


# --- plots ---------------------------------------------------------------------------------------


def _svg(figure):
    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "report", "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width, height):
    figure = Figure(figsize=(width, height), dpi=100)
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="both", color="#e6e6e6", linewidth=0.8)
    axes.set_axisbelow(True)
    return figure, axes


def _ordered_statuses(present):
    known = [s for s in schema.STATUSES if s in present]
    return known + sorted(s for s in present if s not in schema.STATUSES)


def plot_status_by_dataset(counts: dict[str, dict[str, int]]) -> str | None:
    datasets = sorted(counts)
    statuses = _ordered_statuses({s for per in counts.values() for s in per})
    if not datasets or not statuses:
        return None
    figure, axes = _figure(8.5, max(2.2, 0.75 * len(datasets) + 1.6))
    left = np.zeros(len(datasets))
    for status in statuses:
        values = np.array([counts[d].get(status, 0) for d in datasets], dtype=float)
        if not values.any():
            continue
        axes.barh(
            datasets,
            values,
            left=left,
            color=STATUS_COLORS.get(status, OTHER_COLOR),
            label=status,
            edgecolor="white",
            linewidth=0.6,
        )
        left += values
    for y, total in enumerate(left):
        ok = counts[datasets[y]].get(schema.OK, 0)
        axes.text(
            total, y, f"  {int(total):,} rows, {100.0 * ok / total:.0f}% ok" if total else "", va="center", fontsize=9
        )
    axes.set_xlim(0, max(left.max(), 1) * 1.25)
    axes.invert_yaxis()
    axes.set_xlabel("rows")
    axes.grid(axis="y", visible=False)
    axes.legend(ncol=min(6, len(statuses)), fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    return _svg(figure)


def plot_hosts(hosts: dict[str, list[int]], top: int) -> str | None:
    if not hosts:
        return None
    chosen = sorted(hosts.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    names = [f"{host}  ({rows:,})" for host, (rows, _) in chosen]
    rates = np.array([ok / rows if rows else 0.0 for _, (rows, ok) in chosen])
    figure, axes = _figure(6.2, max(2.0, 0.3 * len(chosen) + 1.0))
    colors = [STATUS_COLORS[schema.OK] if r >= 0.8 else "#f0a030" if r >= 0.4 else "#d1493f" for r in rates]
    axes.barh(names, rates, color=colors)
    axes.barh(names, 1 - rates, left=rates, color="#eeeeee")
    for y, rate in enumerate(rates):
        axes.text(1.01, y, f"{100 * rate:.0f}%", va="center", fontsize=9)
    axes.set_xlim(0, 1.1)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=9)
    axes.grid(axis="y", visible=False)
    axes.set_xlabel("rows ok (host of the manifest URL; rows in parentheses)")
    return _svg(figure)


def _bytes_label(value, _pos=None):
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:g} {unit}"
        value /= 1000.0
    return f"{value:g}"


def _ms_label(value, _pos=None):
    return f"{value:g} ms" if value < 1000 else f"{value / 1000:g} s"


def _trimmed(edges, series):
    """Edges and series cut to the bins from the first to the last non-empty one."""
    total = np.sum(series, axis=0)
    nonzero = np.nonzero(total)[0]
    if not nonzero.size:
        return None, None
    lo, hi = max(nonzero[0] - 1, 0), min(nonzero[-1] + 2, len(total))
    return edges[lo : hi + 1], [s[lo:hi] for s in series]


class _UnitLogFormatter(LogFormatter):
    """Labels a log axis's minor ticks where matplotlib's default would, in the axis's own units.

    Why: the default writes those labels as mathtext ("2x10^5" beside a major "100 s": raw
    milliseconds, in another notation), and parsing mathtext was half of a small run's report.
    """

    def __init__(self, label: Callable[..., str]) -> None:
        super().__init__(base=10.0, labelOnlyBase=False)
        self._label = label

    def __call__(self, x, pos=None):
        return self._label(x) if super().__call__(x, pos) else ""


def plot_stacked_histogram(
    edges: np.ndarray, layers: list[tuple[str, str, np.ndarray]], xlabel: str, formatter: Callable[..., str]
) -> str | None:
    """layers: [(label, colour, counts)] stacked on a log x axis."""
    layers = [layer for layer in layers if np.any(layer[2])]
    if not layers:
        return None
    edges, series = _trimmed(edges, [layer[2] for layer in layers])
    figure, axes = _figure(5.4, 3.2)
    bottom = np.zeros(len(series[0]))
    widths = np.diff(edges)
    for (label, color, _), counts in zip(layers, series, strict=True):
        drawn = counts > 0  # empty bins are no patches: fewer to lay out and to write
        axes.bar(
            edges[:-1][drawn],
            counts[drawn],
            width=widths[drawn],
            bottom=bottom[drawn],
            align="edge",
            color=color,
            label=label,
            edgecolor="white",
            linewidth=0.5,
        )
        bottom += counts
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(formatter))
    axes.xaxis.set_minor_formatter(_UnitLogFormatter(formatter))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rows")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize=9, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(figure)


def plot_latency(latency: dict[str, np.ndarray]) -> str | None:
    statuses = _ordered_statuses(set(latency))
    layers = [(s, STATUS_COLORS.get(s, OTHER_COLOR), latency[s]) for s in statuses]
    return plot_stacked_histogram(LATENCY_EDGES, layers, "fetch time, retries included (log scale)", _ms_label)


def plot_sizes(stats: TableStats) -> str | None:
    layers = [
        ("ok", STATUS_COLORS[schema.OK], stats.size_ok),
        ("fetched, then rejected", REJECTED_COLOR, stats.size_rejected),
    ]
    return plot_stacked_histogram(SIZE_EDGES, layers, "body size (log scale)", _bytes_label)


def plot_pair_matrix(pairs: dict[tuple[str, str], int]) -> str | None:
    if not pairs:
        return None
    names = sorted({a for a, _ in pairs} | {b for _, b in pairs})
    matrix = np.zeros((len(names), len(names)))
    for (a, b), value in pairs.items():
        i, j = names.index(a), names.index(b)
        matrix[i, j] = matrix[j, i] = value
    size = 1.3 + 0.9 * len(names)
    figure = Figure(figsize=(size + 1.6, size), dpi=100)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1))
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            dark = matrix[i, j] > 0.6 * matrix.max()
            axes.text(
                j,
                i,
                f"{int(matrix[i, j]):,}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "#222222",
            )
    bar = figure.colorbar(image, ax=axes, shrink=0.8, label="duplicate row pairs")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    axes.set_title("diagonal: within a dataset; elsewhere: across", fontsize=9)
    return _svg(figure)


def plot_named_values(values: dict[str, float], xlabel: str, title: str | None = None) -> str | None:
    """A dict of numbers (a generic "duplicates" entry) as horizontal bars."""
    items = [(str(k), v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not items:
        return None
    items.sort(key=lambda kv: -kv[1])
    items = items[:30]
    figure, axes = _figure(6.2, max(1.8, 0.3 * len(items) + 1.0))
    axes.barh([k for k, _ in items], [v for _, v in items], color="#3f88c5")
    if all(float(v).is_integer() for _, v in items):
        axes.xaxis.get_major_locator().set_params(integer=True)
    axes.invert_yaxis()
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="y", visible=False)
    axes.set_xlabel(xlabel)
    if title:
        axes.set_title(title, fontsize=9)
    return _svg(figure)


# --- the page ------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       background: #f5f6f8; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { color: #b8c0cf; font-size: 13px; word-break: break-all; }
main { padding: 20px 28px 40px; max-width: 1400px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 18px; }
.notice { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 8px 12px; margin: 0 0 12px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 130px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { font-size: 12px; color: #5b6475; text-transform: uppercase; letter-spacing: .04em; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
section { background: #fff; border-radius: 8px; padding: 14px 18px; box-shadow: 0 1px 2px rgba(0,0,0,.08);
          margin-bottom: 16px; overflow-x: auto; }
section h2 { font-size: 16px; margin: 0 0 10px; }
section p.note { font-size: 12px; color: #5b6475; margin: 6px 0 0; }
img.plot { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eceef2; text-align: right; }
table.status th { font-size: 12px; vertical-align: bottom; }
.blocks { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.blocks h3 { font-size: 13px; margin: 10px 0 4px; }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
.text { text-align: left; max-width: 640px; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.empty { color: #8a93a3; font-style: italic; }
.cluster { border-top: 1px solid #eceef2; padding: 6px 0; }
.chead { font-size: 12px; color: #3b4252; margin-bottom: 4px; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; }
.thumbs figure { margin: 0; width: 84px; text-align: center; font-size: 10px; color: #3b4252; }
.thumbs img, .thumbs .noimg { max-width: 72px; max-height: 72px; border: 3px solid transparent; border-radius: 3px; }
.thumbs .noimg { width: 72px; height: 72px; background: #eceef2; line-height: 72px; margin: auto; }
.thumbs figure.canon img { border-color: #f0a030; }
.badge { display: inline-block; color: #fff; border-radius: 3px; padding: 0 4px; font-size: 9px; }
"""


def _e(value):
    return html.escape(str(value), quote=True)


def _plot(svg_b64, alt):
    if svg_b64 is None:
        return '<p class="empty">no data</p>'
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/svg+xml;base64,{svg_b64}">'


def _section(title, body, note=None, wide=False):
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    style = ' style="grid-column: 1 / -1"' if wide else ""
    return f"<section{style}><h2>{_e(title)}</h2>{body}{note_html}</section>"


def _fmt(value):
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _kv_table(mapping, header=("name", "value")):
    if not mapping:
        return '<p class="empty">none</p>'
    rows = "".join(f'<tr><td>{_e(k)}</td><td class="text">{_e(_fmt(v))}</td></tr>' for k, v in mapping.items())
    return f'<table><tr><th>{_e(header[0])}</th><th class="text">{_e(header[1])}</th></tr>{rows}</table>'


def _status_table(counts):
    datasets = sorted(counts)
    statuses = _ordered_statuses({s for per in counts.values() for s in per})
    head = "".join(
        f'<th><span class="swatch" style="background:{STATUS_COLORS.get(s, OTHER_COLOR)}"></span>'
        f"{_e(s).replace('_', '_<wbr>')}</th>"
        for s in statuses
    )
    lines = [f"<tr><th>dataset</th>{head}<th>total</th></tr>"]
    grand = collections.Counter()
    for d in datasets:
        grand.update(counts[d])
        cells = "".join(f"<td>{counts[d].get(s, 0):,}</td>" for s in statuses)
        lines.append(f"<tr><td>{_e(d)}</td>{cells}<td>{sum(counts[d].values()):,}</td></tr>")
    cells = "".join(f"<td><b>{grand.get(s, 0):,}</b></td>" for s in statuses)
    lines.append(f"<tr><td><b>total</b></td>{cells}<td><b>{sum(grand.values()):,}</b></td></tr>")
    return '<table class="status">' + "".join(lines) + "</table>"


def _errors_table(errors, limit=12):
    if not errors:
        return '<p class="empty">no errors</p>'
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:{STATUS_COLORS.get(s, OTHER_COLOR)}"></span>{_e(s)}</td>'
        f'<td class="text">{_e(e)}</td><td>{n:,}</td></tr>'
        for (s, e), n in errors.most_common(limit)
    )
    return f'<table><tr><th>status</th><th class="text">error</th><th>rows</th></tr>{rows}</table>'


def _metrics_tables(section):
    if not section:
        return (
            '<p class="empty">not recorded: the run was not waited for (a Dataflow launch that returns at '
            "submission) or its runner reports no metrics</p>"
        )
    parts = []
    counters = section.get("counters") or {}
    for namespace, values in counters.items():
        if namespace in HIDDEN_COUNTER_NAMESPACES:
            continue
        parts.append(f"<div><h3>{_e(namespace)}</h3>" + _kv_table(values, ("counter", "value")) + "</div>")
    distributions = section.get("distributions") or {}
    if distributions:
        lines = ["<tr><th>distribution</th><th>count</th><th>mean</th><th>min</th><th>max</th></tr>"]
        for namespace, values in distributions.items():
            for name, d in values.items():
                lines.append(
                    f"<tr><td>{_e(namespace)}/{_e(name)}</td><td>{_fmt(d.get('count'))}</td>"
                    f"<td>{_fmt(d.get('mean'))}</td><td>{_fmt(d.get('min'))}</td><td>{_fmt(d.get('max'))}</td></tr>"
                )
        parts.append("<div><h3>distributions</h3><table>" + "".join(lines) + "</table></div>")
    return '<div class="blocks">' + "".join(parts) + "</div>"


# --- cluster gallery (issue 14): pictures of the largest and most distant near-duplicate clusters --

GALLERY_CLUSTERS = 6  # clusters per gallery
GALLERY_MEMBERS = 8  # thumbnails per cluster
THUMB_PX = 72  # longest side of an embedded thumbnail
DATASET_COLORS = {
    "cc3m": "#3f88c5",
    "cc12m": "#2e9e48",
    "openimages": "#d1493f",
    "imagenet_captions": "#8c5bb3",
    "zero": "#f0a030",
}


def read_cluster_records(out, limit=200_000):
    """Cluster records of OUT/duplicates/*.jsonl (at most `limit`; none if the run wrote none).

    Args:
        out: the ingest output directory, local or gs://.
        limit: stop after this many records (a gallery needs the top few, not all of them).

    Returns:
        A list of cluster record dicts (transforms.clustering.clusters.WriteDuplicates).
    """
    records = []
    try:
        matches = FileSystems.match([join_path(out, "duplicates", "clusters-*.jsonl")])[0].metadata_list
    except Exception:  # noqa: BLE001 - no duplicates directory: no gallery
        return records
    for meta in sorted(matches, key=lambda m: m.path):
        with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            for line in io.TextIOWrapper(handle, encoding="utf-8"):
                if line.strip():
                    records.append(json.loads(line))
                    if len(records) >= limit:
                        return records
    return records


def _thumbnail(out, sha256):
    """A small JPEG data: URI of the stored blob with this sha256, or None if not stored/decodable."""
    if not sha256:
        return None
    try:
        from PIL import Image

        found = FileSystems.match([join_path(out, "blobs", sha256[:2], sha256[2:4], sha256 + "*")])[0]
        if not found.metadata_list:
            return None
        with FileSystems.open(found.metadata_list[0].path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            image = Image.open(io.BytesIO(handle.read()))
            image.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
            image = image.convert("RGB")
        image.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=70)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:  # noqa: BLE001 - a picture that cannot be shown is shown as a blank tile
        return None


def _member_distance(member):
    distance = member.get("view_distance", member.get("distance"))
    return distance if isinstance(distance, int) else -1


def gallery_clusters(records, count=GALLERY_CLUSTERS):
    """(largest near-duplicate clusters, most distant ones, placeholder groups), `count` each.

    Most distant: the largest distance of a member to its canonical row through the match that
    joined it (pHash for near matches, the view's pHash distance for view matches).
    """
    real = [r for r in records if not r.get("is_placeholder") and r.get("kind") == "near"]
    largest = sorted(real, key=lambda r: (-r["size"], r["cluster_id"]))[:count]
    distant = sorted(
        real,
        key=lambda r: (
            -max((_member_distance(m) for m in r["members"] if m.get("match") != "canonical"), default=-1),
            r["cluster_id"],
        ),
    )[:count]
    placeholders = sorted((r for r in records if r.get("is_placeholder")), key=lambda r: (-r["size"], r["cluster_id"]))[
        :count
    ]
    return largest, distant, placeholders


def _shown_members(record, farthest):
    """The canonical row, then up to GALLERY_MEMBERS - 1 others: the farthest first (farthest),
    or one of each way of matching in turn, so a gallery shows how the cluster was built."""
    canonical = [m for m in record["members"] if m.get("match") == "canonical"]
    others = sorted(
        (m for m in record["members"] if m.get("match") != "canonical"), key=lambda m: (-_member_distance(m), m["key"])
    )
    if not farthest:
        by_kind = collections.defaultdict(list)
        for m in others:
            by_kind[m.get("match")].append(m)
        others = [m for group in itertools.zip_longest(*by_kind.values()) for m in group if m]
    return canonical + others[: GALLERY_MEMBERS - len(canonical)]


def _cluster_card(out, record, farthest=False):
    tiles = []
    for m in _shown_members(record, farthest):
        uri = _thumbnail(out, m.get("sha256"))
        canonical = m.get("match") == "canonical"
        picture = f'<img src="{uri}" alt="{_e(m["key"])}">' if uri else '<div class="noimg">?</div>'
        colour = DATASET_COLORS.get(m.get("dataset"), OTHER_COLOR)
        if canonical:
            how = "canonical"
        elif m.get("match") in ("near", "transitive", "phash", "sha256", "url"):
            how = f"{m['match']} {m['distance']}" if m.get("distance") is not None else m["match"]
        else:  # a view: mirror, trim, crop, centre
            how = f"view {m['match']} {m.get('view_distance', '')}"
        tiles.append(
            f'<figure class="{"canon" if canonical else ""}" title="{_e(m["key"])} {_e(m.get("url") or "")}">'
            f'{picture}<figcaption><span class="badge" style="background:{colour}">'
            f"{_e(m.get('dataset'))}</span><br>{_e(how)}</figcaption></figure>"
        )
    more = record["size"] - min(len(record["members"]), GALLERY_MEMBERS)
    datasets = ", ".join(f"{_e(d)} {n}" for d, n in record.get("datasets", {}).items())
    head = (
        f'<div class="chead"><b>{record["size"]} rows</b> &middot; {datasets} &middot; '
        f"max pHash distance {_e(record.get('max_distance'))} &middot; <code>{_e(record['cluster_id'])}</code>"
        + (f" &middot; +{more} more" if more > 0 else "")
        + "</div>"
    )
    return f'<div class="cluster">{head}<div class="thumbs">{"".join(tiles)}</div></div>'


def _gallery_body(out, records):
    largest, distant, placeholders = gallery_clusters(records)
    if not (largest or placeholders):
        return '<p class="empty">no near-duplicate or placeholder clusters</p>'
    parts = []
    for title, group in (
        ("Largest near-duplicate clusters", largest),
        ("Most distant near-duplicate clusters", distant),
        ("Placeholder groups", placeholders),
    ):
        parts.append(
            f"<h3>{_e(title)}</h3>"
            + ("".join(_cluster_card(out, r, group is distant) for r in group) or '<p class="empty">none</p>')
        )
    return "".join(parts)


def plot_overlap(across, within):
    """Rows in clusters shared by two datasets (across) and within one (within), as bars."""
    items = [(k.replace("|", " | "), v.get("rows", 0), v.get("clusters", 0)) for k, v in (across or {}).items()]
    items += [(f"{k} only", v.get("rows", 0), v.get("clusters", 0)) for k, v in (within or {}).items()]
    if not items:
        return None
    figure, axes = _figure(6.2, max(1.8, 0.34 * len(items) + 1.0))
    names = [k for k, _, _ in items]
    bars = axes.barh(names, [r for _, r, _ in items], color=["#3f88c5" if "|" in k else "#9fb7d3" for k in names])
    for bar, (_, _rows, clusters) in zip(bars, items, strict=True):
        axes.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {clusters:,} clusters", va="center", fontsize=8
        )
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.invert_yaxis()
    axes.grid(axis="y", visible=False)
    axes.set_xlabel("rows in duplicate clusters")
    axes.set_title("dark: clusters spanning two datasets; light: within one dataset", fontsize=9)
    return _svg(figure)


def _duplicates_body(duplicates, stats):
    """The dedup stage's figures, rendered generically: scalars as cards, dicts of numbers as bars,
    anything else as a table; then the pair matrix and cluster sizes measured from the table."""
    duplicates = dict(duplicates or {})
    scalars = {k: v for k, v in duplicates.items() if isinstance(v, (int, float, str, bool)) or v is None}
    measured = {
        "clusters in the table": len(stats.clusters),
        "rows in clusters": sum(sum(m.values()) for m in stats.clusters.values()),
        "non-canonical rows": stats.non_canonical,
    }
    cards = "".join(
        f'<div class="card"><div class="v">{_e(_fmt(v))}</div><div class="k">{_e(str(k).replace("_", " "))}</div></div>'
        for k, v in list(scalars.items()) + list(measured.items())
    )
    parts = [f'<div class="cards">{cards}</div>']
    if duplicates.get("across_datasets") or duplicates.get("within_dataset"):
        parts.append(
            "<h3 style='font-size:13px;margin:10px 0 4px'>overlap of datasets</h3>"
            + _plot(
                plot_overlap(duplicates.get("across_datasets"), duplicates.get("within_dataset")),
                "cross-dataset overlap",
            )
        )
    for key, value in duplicates.items():
        if key in scalars or key in ("across_datasets", "within_dataset"):
            continue
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            parts.append(
                f"<h3 style='font-size:13px;margin:10px 0 4px'>{_e(key)}</h3>"
                + _plot(plot_named_values(value, key), key)
            )
        elif isinstance(value, dict):
            parts.append(
                f"<h3 style='font-size:13px;margin:10px 0 4px'>{_e(key)}</h3>"
                + _kv_table(
                    {k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for k, v in value.items()}
                )
            )
        else:
            parts.append(_kv_table({key: json.dumps(value, default=str)}))
    return "".join(parts)


def integrity_notices(summary):
    """One line per integrity event summary.json records: a cut compressed manifest kept with
    --accept-truncated, books that do not balance (docs/integrity.md)."""
    books = summary.get("books") or {}
    lines = [
        f"Truncated manifest: {t['path']} ended after line {t['last_line']} ({t['rows']:,} records kept,"
        f" --accept-truncated): {t['reason']}"
        for t in books.get("truncated") or []
    ]
    if books and not books.get("balanced", True):
        lines.append(f"The books do not balance: {books.get('rows_in')} rows in, {books.get('rows_out')} rows out.")
    return lines


def render_html(summary, stats, out, top_hosts=20, clusters=None):
    counts = summary.get("counts") or {d: dict(per) for d, per in stats.counts.items()}
    rows = summary.get("rows", stats.rows)
    totals: collections.Counter[str] = collections.Counter()
    for per in counts.values():
        totals.update(per)
    ok_pct = f"{100.0 * totals.get(schema.OK, 0) / rows:.1f}%" if rows else "-"
    timings = summary.get("timings") or {}
    metrics = summary.get("metrics")
    fetched_bytes = ((metrics or {}).get("counters", {}).get("fetch", {}) or {}).get("bytes")
    duplicates = summary.get("duplicates") or {}
    cards = [
        ("rows", _fmt(rows)),
        ("ok", ok_pct),
        ("datasets", _fmt(len(counts))),
        ("wall time", f"{timings['wall_seconds']:,.1f} s" if "wall_seconds" in timings else "-"),
        ("rows / s", _fmt(timings.get("rows_per_second", "-"))),
        ("distinct images stored", _fmt(duplicates.get("blobs", "-"))),
    ]
    if fetched_bytes is not None:
        cards.append(("bytes fetched", human_bytes(fetched_bytes)))
    resources = summary.get("resources") or {}  # local runs only (pipelines/report/run_resources.py)
    if "cpu_ms_per_row" in resources:
        cards.append(("CPU a row", f"{resources['cpu_ms_per_row']:,.2f} ms"))
    card_html = "".join(
        f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>' for k, v in cards
    )
    pairs = stats.duplicate_pairs()
    sizes = stats.cluster_sizes()
    mismatch = ""
    if stats.rows != rows:
        mismatch = f" The table holds {stats.rows:,} rows; summary.json says {rows:,}."
    sections = [
        _section(
            "Status by dataset",
            _plot(plot_status_by_dataset(counts), "status by dataset") + _status_table(counts),
            wide=True,
            note="Every manifest row is in the table, failures included." + mismatch,
        ),
        _section(
            f"Success rate by host (top {top_hosts} by rows)",
            _plot(plot_hosts(stats.hosts, top_hosts), "success by host"),
            note=f"{len(stats.hosts):,} distinct hosts.",
        ),
        _section("Most common errors", _errors_table(stats.errors)),
        _section(
            "Image size",
            _plot(plot_sizes(stats), "size histogram"),
            note="Bytes after transfer decoding; 'rejected' had a body but failed a check "
            "(not an image, hash mismatch, corrupt).",
        ),
        _section(
            "Fetch latency",
            _plot(plot_latency(stats.latency), "latency histogram"),
            note="Wall time per row including redirects and retries, stacked by final status.",
        ),
        _section(
            "Duplicates",
            _duplicates_body(duplicates, stats)
            + "<div class='grid' style='margin-top:8px'>"
            + "<div>"
            + _plot(plot_pair_matrix(pairs), "duplicate pairs by dataset")
            + "</div>"
            + "<div>"
            + _plot(
                plot_named_values({f"{k} rows": v for k, v in sorted(sizes.items())}, "clusters", "clusters by size"),
                "cluster sizes",
            )
            + "</div></div>",
            wide=True,
            note="Pairs of rows sharing a cluster_id; cluster sizes are rows per cluster.",
        ),
        _section(
            "Duplicate clusters",
            _gallery_body(out, clusters or []),
            wide=True,
            note="Thumbnails of the stored blobs; the canonical row is outlined; under each: its "
            "dataset and how it joined (pHash distance for near, the view and its distance for "
            "mirror/trim/crop/centre matches; transitive: through another member).",
        ),
        _section(
            "Beam metrics",
            _metrics_tables(metrics),
            wide=True,
            note="Summed over steps; committed values where the runner reports them. Per-dataset "
            "counters (rows_by_dataset) are in summary.json.",
        ),
        _section("Options", _kv_table(summary.get("options") or {})),
    ]
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{summary.get('job', 'ingest')} report"
    notices = "".join(f'<p class="notice">{_e(line)}</p>' for line in integrity_notices(summary))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{STYLE}</style></head>
<body><header><h1>{_e(title)}</h1>
<div class="sub">{_e(out)} &middot; started {_e(timings.get("started_at", "?"))} &middot; generated {generated}</div>
</header><main>
{notices}<div class="cards">{card_html}</div>
<div class="grid">{"".join(sections)}</div>
</main></body></html>
"""


def write_report(out: str, top_hosts: int = 20) -> str:
    """Reads OUT/summary.json and OUT/images/*.parquet, writes OUT/report.html; returns its path."""
    summary = read_json(join_path(out, "summary.json"))
    stats = read_table_stats(out)
    page = render_html(summary, stats, out, top_hosts, read_cluster_records(out))
    path = join_path(out, REPORT_NAME)
    with FileSystems.create(path, mime_type="text/html") as handle:
        handle.write(page.encode("utf-8"))
    return path


def try_write_report(out: str, top_hosts: int = 20) -> str | None:
    """write_report for the end of a job: the data is already written, so a failing report is a
    warning on stderr (rerun `python -m pipelines.report OUT`), not a failed job."""
    try:
        return write_report(out, top_hosts)
    except Exception as exc:  # noqa: BLE001 (any failure here must not fail a finished run)
        print(
            f"report: not written ({type(exc).__name__}: {exc}); rerun python -m pipelines.report {out}",
            file=sys.stderr,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.report", description="Write OUT/report.html from OUT/summary.json and OUT/images."
    )
    parser.add_argument("out", help="an ingest output directory, local or gs://")
    parser.add_argument("--top-hosts", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        path = write_report(args.out, args.top_hosts)
    except (OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
