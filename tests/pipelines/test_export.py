"""Export end to end: a real ingest on loopback, then both formats and every resize mode, read back
with the real `webdataset` and `datasets` packages."""

import glob
import hashlib
import io
import json
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest
from PIL import Image

from pipelines import export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, jpeg, picture, placeholder_png
from tests.conftest import local_options
from tests.paths import REPO
from transforms.export import selection

pytestmark = pytest.mark.timeout(180)

JPEG = {"Content-Type": "image/jpeg"}
PNG = {"Content-Type": "image/png"}
N = 96  # the resize target in these tests


def _rgba_png():
    image = picture(6, (300, 200)).convert("RGBA")
    image.putalpha(128)
    return encode(image, "PNG")


def routes():
    """Pictures of several sizes and shapes, exact and near duplicates, a placeholder, failures."""
    return {
        "/wide.jpg": Reply(200, jpeg(1, (400, 200)), JPEG),
        "/tall.jpg": Reply(200, jpeg(2, (150, 300)), JPEG),
        "/same.jpg": Reply(200, jpeg(3, (320, 240)), JPEG),
        "/copy-of-same.jpg": Reply(200, jpeg(3, (320, 240)), JPEG),  # exact duplicate, other URL
        "/near.jpg": Reply(200, encode(picture(3, (320, 240)).resize((200, 150)), "JPEG", quality=70), JPEG),
        "/small.jpg": Reply(200, jpeg(4, (90, 70)), JPEG),  # under N: never upscaled
        "/alpha.png": Reply(200, _rgba_png(), PNG),
        "/gone-blob.jpg": Reply(200, jpeg(5, (200, 200)), JPEG),  # its blob is deleted after ingest
        **{f"/unavailable{n}.jpg": Reply(200, placeholder_png(), PNG) for n in range(3)},
        "/html": Reply(200, b"<html>moved</html>", {"Content-Type": "text/html"}),
    }


def read_table(out):
    return ds.dataset(os.path.join(out, "images"), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An ingest output with ok rows, clusters, placeholders, failures and one unreadable blob."""
    tmp = tmp_path_factory.mktemp("export-in")
    with SampleWebServer(routes()) as web:
        paths = [
            "/wide.jpg",
            "/tall.jpg",
            "/same.jpg",
            "/copy-of-same.jpg",
            "/near.jpg",
            "/small.jpg",
            "/alpha.png",
            "/gone-blob.jpg",
            "/unavailable0.jpg",
            "/unavailable1.jpg",
            "/unavailable2.jpg",
            "/html",
            "/dead.jpg",
        ]
        (tmp / "cc3m.tsv").write_text("".join(f"caption {i}\t{web.url(p)}\n" for i, p in enumerate(paths)))
        (tmp / "cc12m.tsv").write_text(f"{web.url('/wide.jpg')}\twide again, from cc12m\n")
        out = str(tmp / "out")
        ingest.run(
            local_options(
                manifest=[f"cc3m={tmp / 'cc3m.tsv'}", f"cc12m={tmp / 'cc12m.tsv'}"],
                output=out,
                **{"allow-network": "127.0.0.1/32", "timeout": 5},
            )
        )
    rows = read_table(out)
    gone = next(r for r in rows if r["url"].endswith("/gone-blob.jpg"))
    os.remove(gone["blob"])
    return out, rows, gone["key"]


def expected_keys(rows, include, unreadable):
    """The selection, computed from the table here (not with the code under test)."""
    return {
        r["key"]
        for r in rows
        if r["status"] == "ok"
        and not r["is_placeholder"]
        and r["key"] != unreadable
        and (include == "all" or r["cluster_id"] is None or r["is_canonical"])
    }


def run_export(tmp_path, out, fmt, *extra, name="exp"):
    exp = str(tmp_path / name)
    result = export.run(local_options(input=out, output=exp, format=fmt) + list(extra))
    assert result.state == "DONE"
    with open(os.path.join(exp, "summary.json")) as handle:
        return exp, json.load(handle)


def read_webdataset(exp):
    import webdataset as wds

    shards = sorted(glob.glob(os.path.join(exp, "*.tar")))
    dataset = wds.WebDataset(shards, shardshuffle=False).decode("pil")
    return [sample for sample in dataset]


def read_hf(exp, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # read at import: set them if imported before
        monkeypatch.setattr(datasets.config, name, True)
    files = sorted(glob.glob(os.path.join(exp, "*.parquet")))
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache"))


def test_the_input_has_every_case(ingested):
    _, rows, _ = ingested
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) - len(ok) == 2  # /html, /dead.jpg
    assert sum(1 for r in ok if r["is_placeholder"]) == 3
    assert sum(1 for r in ok if r["cluster_id"] and not r["is_canonical"] and not r["is_placeholder"]) >= 2
    assert sum(1 for r in ok if r["cluster_id"] is None) >= 4
    assert len(expected_keys(rows, "all", None)) > len(expected_keys(rows, "canonical", None))


def test_webdataset_original_bytes(ingested, tmp_path):
    out, rows, unreadable = ingested
    exp, summary = run_export(tmp_path, out, "webdataset", "--shard-size=3")
    samples = read_webdataset(exp)
    by_key = {r["key"]: r for r in rows}
    keys = [s["json"]["key"] for s in samples]
    assert sorted(keys) == sorted(expected_keys(rows, "canonical", unreadable))
    assert len(set(s["__key__"] for s in samples)) == len(samples)
    for sample in samples:
        assert "." not in sample["__key__"]
        row = by_key[sample["json"]["key"]]
        image_ext = next(ext for ext in ("jpg", "png", "webp") if ext in sample)
        image = sample[image_ext]
        assert image.size == (row["width"], row["height"])
        assert sample["json"]["sha256"] == row["sha256"] and sample["txt"] == row["caption"]
        assert sample["json"]["original_width"] == row["width"] == sample["json"]["width"]
        assert not row["is_placeholder"] and (row["cluster_id"] is None or row["is_canonical"])
    # the original bytes, untouched
    import webdataset as wds

    for sample in wds.WebDataset(sorted(glob.glob(os.path.join(exp, "*.tar"))), shardshuffle=False):
        data = sample.get("jpg") or sample.get("png")
        meta = json.loads(sample["json"])
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    assert summary["rows_read"] == len(rows)
    assert summary["exported"] == len(samples)
    assert summary["skipped"][selection.UNREADABLE_BLOB] == 1
    assert summary["skipped"][selection.PLACEHOLDER] == 3
    assert summary["rows_read"] == summary["exported"] + sum(summary["skipped"].values())
    assert sum(s["samples"] for s in summary["shards"]) == len(samples)
    # shards of exactly --shard-size rows but the last (the unreadable blob's row leaves a gap)
    assert len(summary["shards"]) == -(-(len(samples) + 1) // 3)
    assert [s["name"] for s in summary["shards"]] == sorted(os.listdir(exp))[: len(summary["shards"])]


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_webdataset_resize_modes(ingested, tmp_path, mode):
    out, rows, unreadable = ingested
    exp, summary = run_export(tmp_path, out, "webdataset", f"--resize={N}", f"--resize-mode={mode}", "--include=all")
    samples = read_webdataset(exp)
    by_key = {r["key"]: r for r in rows}
    assert sorted(s["json"]["key"] for s in samples) == sorted(expected_keys(rows, "all", unreadable))
    for sample in samples:
        assert "jpg" in sample and "png" not in sample
        row, meta = by_key[sample["json"]["key"]], sample["json"]
        width, height = row["width"], row["height"]
        assert sample["jpg"].size == (meta["width"], meta["height"])
        assert (meta["original_width"], meta["original_height"]) == (width, height)
        assert sample["jpg"].size == expected_size(mode, width, height)
    assert summary["exported"] == len(samples)


def expected_size(mode, width, height):
    """img2dataset's meanings, never upscaling."""
    if mode == "keep_ratio":
        if min(width, height) <= N:
            return width, height
        scale = N / min(width, height)
        return (N, round(height * scale)) if width <= height else (round(width * scale), N)
    if mode == "center_crop":
        return (width, height) if min(width, height) <= N else (N, N)
    return (width, height) if max(width, height) <= N else (N, N)


def test_hf_parquet_resized_and_original(ingested, tmp_path, monkeypatch):
    out, rows, unreadable = ingested
    exp, summary = run_export(
        tmp_path,
        out,
        "hf-parquet",
        f"--resize={N}",
        "--resize-mode=center_crop",
        "--encode-format=webp",
        "--shard-size=2",
    )
    dataset = read_hf(exp, tmp_path, monkeypatch)
    assert sorted(dataset["key"]) == sorted(expected_keys(rows, "canonical", unreadable))
    assert summary["exported"] == len(dataset) and summary["shard_count"] == len(
        glob.glob(os.path.join(exp, "*.parquet"))
    )
    by_key = {r["key"]: r for r in rows}
    for record in dataset:
        image = record["image"]
        assert isinstance(image, Image.Image) and image.format == "WEBP"
        row = by_key[record["key"]]
        assert image.size == expected_size("center_crop", row["width"], row["height"])
        assert (record["width"], record["height"]) == image.size
        assert record["sha256"] == row["sha256"] and record["caption"] == row["caption"]
    # untouched bytes: the parquet image bytes hash to the row's sha256
    exp2, _ = run_export(tmp_path, out, "hf-parquet", name="exp-original")
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(glob.glob(os.path.join(exp2, "*.parquet"))))
    for image, sha in zip(table.column("image").to_pylist(), table.column("sha256").to_pylist(), strict=False):
        assert hashlib.sha256(image["bytes"]).hexdigest() == sha
        Image.open(io.BytesIO(image["bytes"])).load()
    assert sorted(table.column("key").to_pylist()) == sorted(expected_keys(rows, "canonical", unreadable))


def test_rerun_is_deterministic_and_replaces_old_shards(ingested, tmp_path):
    out, _, _ = ingested
    exp, first = run_export(tmp_path, out, "webdataset", "--shard-size=2")
    before = {os.path.basename(p): open(p, "rb").read() for p in glob.glob(os.path.join(exp, "*.tar"))}
    open(os.path.join(exp, "00099.tar"), "wb").write(b"stale")
    _, second = run_export(tmp_path, out, "webdataset", "--shard-size=2")
    after = {os.path.basename(p): open(p, "rb").read() for p in glob.glob(os.path.join(exp, "*.tar"))}
    assert before == after and first["shards"] == second["shards"]
    assert not [p for p in os.listdir(exp) if p.startswith("_tmp-")]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.export", "--runner=FnApiRunner", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


BAD = [
    (["--output", "{tmp}/exp", "--format", "webdataset"], "--input OUT"),
    (["--input", "{tmp}/nothing", "--output", "{tmp}/exp", "--format", "webdataset"], "not an ingest or dedup output"),
    (["--input", "{out}", "--output", "{tmp}/exp", "--format", "tfrecord"], "invalid choice"),
    (["--input", "{out}", "--output", "{tmp}/exp", "--format", "webdataset", "--resize", "ten"], "invalid int"),
    (
        ["--input", "{out}", "--output", "{tmp}/exp", "--format", "webdataset", "--resize-mode", "border"],
        "needs --resize",
    ),
    (["--input", "{out}", "--output", "{tmp}/exp", "--format", "webdataset", "--shard-size", "0"], "--shard-size"),
    (
        [
            "--input",
            "{out}",
            "--output",
            "{tmp}/exp",
            "--format",
            "webdataset",
            "--resize",
            "64",
            "--encode-quality",
            "101",
        ],
        "--encode-quality",
    ),
    (
        ["--input", "{bad}", "--output", "{tmp}/exp", "--format", "hf-parquet"],
        "missing column(s) dataset, caption, status, sha256",
    ),
]


def _bad_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a"], "url": ["u"]}), str(bad / "images" / "part-0.parquet"))
    return bad


@pytest.mark.parametrize("args, says", BAD)
def test_bad_input_is_one_line_exit_2(ingested, tmp_path, capsys, args, says):
    out, _, _ = ingested
    bad = _bad_table(tmp_path)
    status = export.main(["--runner=FnApiRunner"] + [a.format(tmp=tmp_path, out=out, bad=bad) for a in args])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("export: ") and says in lines[0], err
    assert not (tmp_path / "exp").exists()


def test_bad_input_from_the_command_line(tmp_path):
    """The real process: exit 2 and one line on stderr, no traceback, nothing written."""
    done = _cli("--input", str(_bad_table(tmp_path)), "--output", str(tmp_path / "exp"), "--format", "webdataset")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing column(s)" in lines[0], done.stderr
    assert not (tmp_path / "exp").exists()


def _exp_files(directory):
    """{relative path: bytes} of every file under EXP but its lease."""
    found = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if name != "_LEASE":
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, directory)] = handle.read()
    return found


def test_a_lost_row_fails_the_books_with_exit_1_and_leaves_the_earlier_export_whole(
    ingested, tmp_path, capsys, monkeypatch
):
    """The job counts rows read apart from its selection: a row lost on the way is exit 1, one line,
    and it is found before any shard is published: EXP keeps the earlier export, byte for byte."""
    out, rows, _ = ingested
    exp = tmp_path / "exp"
    assert export.main(local_options(input=out, output=str(exp), format="webdataset", **{"shard-size": 2})) == 0
    earlier = _exp_files(exp)
    capsys.readouterr()
    process = export._Select.process

    def lossy(self, row):
        if row["key"] == min(r["key"] for r in rows if selection.skip_reason(r) is None):
            return iter(())  # dropped without a reason
        return process(self, row)

    monkeypatch.setattr(export._Select, "process", lossy)
    # another shard size: every shard of this run would replace or retire one of the earlier export's
    status = export.main(local_options(input=out, output=str(exp), format="webdataset", **{"shard-size": 3}))
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if line.startswith("export: ")]
    assert len(lines) == 1 and "books do not balance" in lines[0] and f"{len(rows)} rows read" in lines[0], err
    assert _exp_files(exp) == earlier  # shards, summary.json: nothing replaced, nothing left behind


def test_template_parameters_reach_the_job():
    """What the Flex Template launcher passes (dest names, booleans as values) becomes the job's config."""
    from pipelines.launch import flex_template
    from transforms.export.resize import ResizeConfig

    actions = flex_template.option_actions(export.ExportOptions)
    argv = flex_template.to_job_argv(
        [
            "--input=gs://b/out",
            "--output=gs://b/exp",
            "--format=hf-parquet",
            "--resize=64",
            "--resize_mode=border",
            "--upscale=true",
            "--include=all",
            "--shard_size=500",
            "--encode_format=webp",
            "--encode_quality=80",
        ],
        actions,
    )
    _, opts = export.JOB.parse(argv)  # types and choices checked as the job checks them
    config = export.export_config(opts)
    assert config == export.ExportConfig(
        "gs://b/out", "gs://b/exp", "hf-parquet", "all", 500, ResizeConfig(64, "border", "webp", 80, upscale=True)
    )


def test_nothing_to_export_is_an_empty_export_with_balanced_books(tmp_path):
    from tests.synthetic_out import make_rows, write_out

    rows = [r for r in make_rows(60) if r["status"] != "ok"]
    write_out(str(tmp_path / "out"), rows)
    exp, summary = run_export(tmp_path, str(tmp_path / "out"), "hf-parquet")
    assert summary["rows_read"] == len(rows) == summary["skipped"]["not_ok"] > 0
    assert summary["exported"] == 0 and summary["shards"] == [] and summary["books_balanced"]
    assert os.listdir(exp) == ["summary.json"]
    assert export.load_hint(summary).startswith("nothing to load")
