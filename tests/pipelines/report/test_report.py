"""OUT/report.html: figures right, page self-contained, works on gs://, renders in headless Chromium."""

import base64
import collections
import itertools
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy
import pytest
from PIL import Image

from pipelines.report import html_report
from tests.synthetic_out import make_rows, write_out
from transforms import schema

DATA_URI = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|xlink:href)\s*=\s*["']\s*(?!data:|#)[^"'\s]|url\(\s*["']?\s*(?!data:|#))""", re.I
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    rows = make_rows()
    summary = write_out(str(out), rows)
    return str(out), rows, summary


def test_table_figures_match_the_rows(synthetic):
    out, rows, _ = synthetic
    stats = html_report.read_table_stats(out, batch_size=500)  # several batches and two files
    assert stats.rows == len(rows)
    expected = collections.defaultdict(collections.Counter)
    for r in rows:
        expected[r["dataset"]][r["status"]] += 1
    assert stats.counts == expected
    host0 = [r for r in rows if "//img0.example.org/" in r["url"]]
    assert stats.hosts["img0.example.org"] == [len(host0), sum(r["status"] == schema.OK for r in host0)]
    assert sum(v[0] for v in stats.hosts.values()) == len(rows)
    assert stats.size_ok.sum() == sum(1 for r in rows if r["status"] == schema.OK and r["size_bytes"] is not None)
    assert stats.size_rejected.sum() == sum(1 for r in rows if r["status"] != schema.OK and r["size_bytes"] is not None)
    assert sum(h.sum() for h in stats.latency.values()) == len(rows)
    assert stats.latency[schema.TIMEOUT].sum() == expected_total(rows, schema.TIMEOUT)
    clusters = collections.defaultdict(list)
    for r in rows:
        if r["cluster_id"]:
            clusters[r["cluster_id"]].append(r["dataset"])
    pairs = collections.Counter()
    for members in clusters.values():
        for a, b in itertools.combinations(members, 2):
            pairs[tuple(sorted((a, b)))] += 1
    assert stats.duplicate_pairs() == dict(pairs)
    assert stats.cluster_sizes() == collections.Counter(len(m) for m in clusters.values())
    assert stats.non_canonical == sum(1 for r in rows if r["is_canonical"] is False)


def expected_total(rows, status):
    return sum(1 for r in rows if r["status"] == status)


def test_page_is_self_contained_with_every_plot(synthetic):
    out, _, _ = synthetic
    path = html_report.write_report(out, top_hosts=10)
    assert path == os.path.join(out, "report.html")
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    svgs = [base64.b64decode(b).decode("utf-8") for b in DATA_URI.findall(page)]
    # status by dataset, hosts, size, latency, the generic pairs_by_dataset, pair matrix, cluster sizes
    assert len(svgs) == 7
    for svg in svgs:
        assert ET.fromstring(svg).tag.endswith("svg")
    for text in [page] + svgs:
        assert not EXTERNAL.search(text), EXTERNAL.search(text).group(0)
    for title in (
        "Status by dataset",
        "Success rate by host (top 10 by rows)",
        "Image size",
        "Fetch latency",
        "Duplicates",
        "Beam metrics",
        "Most common errors",
    ):
        assert f"<h2>{title}</h2>" in page
    assert "pairs_by_dataset" in page and "123.5 kB" in page  # generic duplicates key; fetch/bytes counter
    assert "20,000" not in page and "3,000" in page


def test_report_of_a_run_without_metrics_or_duplicates_says_so(tmp_path):
    rows = [
        schema.new_row("cc3m", "cc3m:1", "http://a/1", status=schema.OK, size_bytes=10, fetch_ms=5),
        schema.new_row("cc3m", "cc3m:2", "no url", status=schema.INVALID_URL, error="no scheme"),
    ]
    summary = write_out(str(tmp_path), rows, with_metrics=False)
    summary.pop("duplicates")
    stats = html_report.read_table_stats(str(tmp_path))
    assert stats.hosts == {"a": [1, 1], "(no host)": [1, 0]}
    page = html_report.render_html(summary, stats, str(tmp_path))
    assert "not recorded" in page
    assert page.count("no data") == 2  # no pair matrix, no cluster sizes


def test_command_line(synthetic, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(synthetic[0], out)
    os.remove(out / "report.html") if (out / "report.html").exists() else None
    assert html_report.main([str(out), "--top-hosts", "5"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert "top 5 by rows" in (out / "report.html").read_text()
    assert html_report.main([str(tmp_path / "nothing-here")]) == 2


# --- gs:// through Beam's filesystems, against a loopback GCS emulator -------------------------------


@pytest.fixture
def gcs(gcs_emulator):
    gcs_emulator.bucket("reports")
    return "gs://reports"


def test_report_reads_and_writes_gs(synthetic, gcs):
    from apache_beam.io.filesystems import FileSystems

    local, rows, _ = synthetic
    remote = f"{gcs}/run1"
    for name in ("summary.json", "images/part-00000-of-00002.parquet", "images/part-00001-of-00002.parquet"):
        with open(os.path.join(local, name), "rb") as src, FileSystems.create(f"{remote}/{name}") as dst:
            dst.write(src.read())
    assert html_report.main([remote]) == 0
    with FileSystems.open(f"{remote}/report.html") as handle:
        page = handle.read().decode("utf-8")
    assert len(DATA_URI.findall(page)) == 7 and f"{len(rows):,}" in page


# --- headless Chromium ---------------------------------------------------------------------------


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium on this CI machine: scripts/ensure_chromium.sh should have installed it")
    pytest.skip("chromium not installed (scripts/ensure_chromium.sh installs it)")
    return None


def screenshot(html_path, png_path, profile_dir, size=(1200, 2000)):
    """Render a local page in headless Chromium; nothing but file:// is loaded."""
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile_dir}",
        f"--screenshot={png_path}",
        f"--window-size={size[0]},{size[1]}",
        f"file://{html_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.exists(png_path), done.stderr[-2000:]
    return Image.open(png_path).convert("RGB")


def _hex(color):
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def test_report_renders_in_headless_chromium(synthetic, tmp_path):
    out, _, _ = synthetic
    path = html_report.write_report(out)
    image = screenshot(path, str(tmp_path / "report.png"), str(tmp_path / "profile"))
    assert image.size == (1200, 2000)
    colors = {color: count for count, color in image.getcolors(maxcolors=1 << 24)}
    assert len(colors) > 1500, len(colors)  # anti-aliased plots (text alone gives ~900): not a blank page
    # The plots were drawn, not just the page around them: solid areas of the plot colours are there.
    assert colors.get(_hex(html_report.STATUS_COLORS[schema.OK]), 0) > 5000
    assert colors.get(_hex(html_report.STATUS_COLORS[schema.HTTP_ERROR]), 0) > 500
    assert colors.get(_hex("#1d2330"), 0) > 20000  # the header band
    white = colors.get((255, 255, 255), 0) + colors.get((245, 246, 248), 0)
    assert white < 0.85 * image.size[0] * image.size[1]


def test_a_failing_report_does_not_fail_the_job(tmp_path, capsys):
    assert html_report.try_write_report(str(tmp_path / "no-summary-here")) is None
    assert "python -m pipelines.report" in capsys.readouterr().err


def test_log_axes_label_their_minor_ticks_in_the_axis_units():
    """A run whose fetch times span less than a decade: matplotlib's default labels the minor ticks
    of a log axis in mathtext of the raw unit ("2x10^5", milliseconds, beside a major "100 s"), and
    parsing it was half of a small run's report. They read "200 s" now, in plain text."""
    latency = {schema.OK: numpy.zeros(len(html_report.LATENCY_EDGES) - 1)}
    latency[schema.OK][20:23] = [1, 3, 1]
    svg = base64.b64decode(html_report.plot_latency(latency)).decode()
    labels = re.findall(r"<!-- (.*?) -->", svg)
    assert "200 s" in labels and "100 s" in labels, labels
    assert not any("mathdefault" in label or "times" in label for label in labels), labels
