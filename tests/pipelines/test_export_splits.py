"""Held-out splits that do not leak (`--split NAME=FRACTION,... --split-seed S`,
transforms/export/splits.py): every member of a duplicate cluster in one split, whatever --include,
the same assignment on every run and format, exact books, and no shard of an earlier layout left
for a reader's glob. Real pipeline and files, read back with the real `webdataset` and `datasets`."""

import collections
import glob
import json
import os

import pytest

from pipelines import export
from pipelines.demo.sample_site import encode, jpeg, picture
from tests.conftest import local_options
from tests.synthetic_out import row_with_blob, write_snapshot_table
from transforms import schema
from transforms.clustering.clusters import canonical_sort_key

pytestmark = pytest.mark.timeout(300)

SPLIT = "train=0.5,validation=0.5"
NEAR, EXACT, ALONE = 8, 4, 16  # clusters of 3 near copies, clusters of 3 exact copies, rows in no cluster


def write_out(out):
    """OUT with near clusters (a picture and two smaller re-encodes, CC3M and CC12M), exact clusters
    (one blob, three rows), rows in no cluster and a failed row; cluster columns as dedup sets them.
    Returns {cluster_id: [member keys, canonical first]}."""
    rows, clusters = [], {}
    for n in range(NEAR + EXACT):
        if n < NEAR:
            scene = picture(100 + n, (160, 120))
            members = [
                row_with_blob(out, "cc3m", f"cc3m:n{n}", jpeg(100 + n, (160, 120))),
                row_with_blob(out, "cc12m", f"cc12m:n{n}a", encode(scene.resize((120, 90)), "JPEG", quality=70)),
                row_with_blob(out, "cc12m", f"cc12m:n{n}b", encode(scene.resize((120, 90)), "JPEG", quality=85)),
            ]
        else:
            body = jpeg(200 + n, (100, 80))
            members = [row_with_blob(out, "cc3m", f"cc3m:e{n}{m}", body) for m in range(3)]
        members.sort(key=canonical_sort_key)
        for position, row in enumerate(members):
            row.update(cluster_id=f"c{n:03d}", is_canonical=position == 0)
        clusters[f"c{n:03d}"] = [row["key"] for row in members]
        rows += members
    for n in range(ALONE):
        row = row_with_blob(out, "cc3m", f"cc3m:a{n:02d}", jpeg(300 + n, (90, 70)))
        row.update(cluster_id=None, is_canonical=True)
        rows.append(row)
    rows.append(schema.new_row("cc3m", "cc3m:dead", "http://a.example/dead.jpg", "dead", status=schema.HTTP_ERROR))
    write_snapshot_table(out, rows)
    return clusters


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("split-in") / "out")
    return out, write_out(out)


def run_export(exp, out, *extra, fmt="webdataset", shard_size=4):
    status = export.main(
        local_options(input=out, output=str(exp), format=fmt, **{"shard-size": shard_size}) + list(extra)
    )
    assert status == 0
    with open(os.path.join(exp, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["books_balanced"]
    assert summary["rows_read"] == summary["exported"] + sum(summary["skipped"].values())
    return summary


def read_splits(exp, summary):
    """{split: [table key, ...]} read back with webdataset (or datasets), one list per split, and
    the sample keys checked unique within each split."""
    found = {}
    for name in summary["splits"]:
        if summary["format"] == "webdataset":
            import webdataset as wds

            shards = sorted(glob.glob(os.path.join(exp, name, "*.tar")))
            samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))
            sample_keys = [s["__key__"] for s in samples]
            found[name] = [json.loads(s["json"])["key"] for s in samples]
        else:
            files = sorted(glob.glob(os.path.join(exp, name, "*.parquet")))
            rows = read_hf(exp, files) if files else []
            sample_keys = [r["sample_key"] for r in rows]
            found[name] = [r["key"] for r in rows]
        assert len(set(sample_keys)) == len(sample_keys), name
        assert summary["splits"][name]["exported"] == len(found[name])
    return found


def read_hf(exp, files):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=os.path.join(exp, "..", "hf"))
    return [{"key": row["key"], "sample_key": row["sample_key"]} for row in ds.remove_columns("image")]


def split_of_keys(found):
    return {key: name for name, keys in found.items() for key in keys}


@pytest.fixture(autouse=True)
def offline_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def test_a_cluster_never_straddles_two_splits_and_every_row_is_exported_once(table, tmp_path, capsys):
    """--include all: every ok row exported exactly once across the splits, each cluster's members
    (near copies from two datasets, exact copies) all in one split, both splits non-empty."""
    out, clusters = table
    exp = tmp_path / "exp"
    summary = run_export(exp, out, "--include=all", f"--split={SPLIT}", "--split-seed=1")
    found = read_splits(exp, summary)
    exported = [key for keys in found.values() for key in keys]
    in_cluster = {key for members in clusters.values() for key in members}
    assert len(exported) == len(set(exported)) == 3 * (NEAR + EXACT) + ALONE == summary["exported"]
    assert set(exported) >= in_cluster
    where = split_of_keys(found)
    straddling = {cid: {where[k] for k in members} for cid, members in clusters.items()}
    assert all(len(names) == 1 for names in straddling.values()), straddling
    # why: the test means something only if clusters and single rows fall on both sides
    assert {names.pop() for names in straddling.values()} == {"train", "validation"}
    assert all(found.values())
    assert summary["rows_read"] == summary["exported"] + 1 and summary["skipped"]["not_ok"] == 1
    assert summary["split_seed"] == 1 and summary["split_fractions"] == {"train": 0.5, "validation": 0.5}
    assert sum(s["exported"] for s in summary["splits"].values()) == summary["exported"]
    assert sum(s["shard_count"] for s in summary["splits"].values()) == summary["shard_count"]
    assert sum(s["bytes"] for s in summary["splits"].values()) == summary["bytes"]
    assert not glob.glob(os.path.join(exp, "*.tar"))  # only EXP/NAME/*.tar
    printed = capsys.readouterr().out
    assert f"train {len(found['train'])} (" in printed and f"validation {len(found['validation'])} (" in printed
    assert f'train = wds.WebDataset("{exp}/train/{{00000..' in printed


def test_the_assignment_is_the_same_on_every_run_format_and_include(table, tmp_path, capsys):
    """The same command twice, once as hf-parquet (read with `datasets` as the load line says) and
    once with --include canonical: every row in the same split (a cluster's canonical row where
    its whole cluster went)."""
    out, clusters = table
    args = ("--include=all", f"--split={SPLIT}", "--split-seed=1")
    first = read_splits(tmp_path / "a", run_export(tmp_path / "a", out, *args))
    again = read_splits(tmp_path / "b", run_export(tmp_path / "b", out, *args))
    capsys.readouterr()
    hf_summary = run_export(tmp_path / "c", out, *args, fmt="hf-parquet", shard_size=7)
    assert f'data_files={{"train": "{tmp_path / "c"}/train/*.parquet", "validation": ' in capsys.readouterr().out
    hf = read_splits(tmp_path / "c", hf_summary)
    canonical = read_splits(tmp_path / "d", run_export(tmp_path / "d", out, f"--split={SPLIT}", "--split-seed=1"))
    assert first == again
    assert {name: sorted(keys) for name, keys in hf.items()} == {name: sorted(keys) for name, keys in first.items()}
    where = split_of_keys(first)
    assert all(where[key] == name for name, keys in canonical.items() for key in keys)
    assert sum(map(len, canonical.values())) == NEAR + EXACT + ALONE


def test_another_seed_moves_some_rows(table, tmp_path):
    out, _ = table
    one = split_of_keys(
        read_splits(tmp_path / "a", run_export(tmp_path / "a", out, f"--split={SPLIT}", "--split-seed=1"))
    )
    two = split_of_keys(
        read_splits(tmp_path / "b", run_export(tmp_path / "b", out, f"--split={SPLIT}", "--split-seed=2"))
    )
    assert one.keys() == two.keys()
    assert 0 < sum(one[key] != two[key] for key in one) < len(one)


@pytest.mark.parametrize(
    "value, says",
    [
        ("train=0.9,validation=0.2", "the fractions sum to 1.1"),
        ("train=1", "at least 2 splits"),
        ("train=0.5,train=0.5", "split train named twice"),
        ("Train=0.5,validation=0.5", "bad split name 'Train'"),
        ("train=0.5,va.lid=0.5", "bad split name 'va.lid'"),
        ("train=half,validation=0.5", "fraction of train is not a number: 'half'"),
        ("train=1,validation=0", "fraction of validation must be > 0, got 0"),
        ("train=1.5,validation=-0.5", "fraction of validation must be > 0, got -0.5"),
        ("train=0.5,validation", "'validation' is not NAME=FRACTION"),
        ("train=nan,validation=0.5", "fraction of train must be > 0, got nan"),
    ],
)
def test_a_bad_split_is_one_line_exit_2(table, tmp_path, capsys, value, says):
    out, _ = table
    status = export.main(local_options(input=out, output=str(tmp_path / "exp"), format="webdataset", split=value))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("export: ") and says in lines[0], err
    assert not (tmp_path / "exp").exists()


def test_a_seed_that_is_not_a_number_is_one_line_exit_2(table, tmp_path, capsys):
    out, _ = table
    args = local_options(input=out, output=str(tmp_path / "exp"), format="webdataset", split=SPLIT)
    status = export.main(args + ["--split-seed=one"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "--split-seed" in lines[0], lines


def test_a_seed_without_split_is_one_line_exit_2(table, tmp_path, capsys):
    """`--split-seed 7` alone asks for a seeded split and gets none. Before: exit 0, one set of
    shards EXP/00000.tar, ... and no split, the seed silently ignored."""
    out, _ = table
    args = local_options(input=out, output=str(tmp_path / "exp"), format="webdataset")
    status = export.main(args + ["--split-seed=7"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "--split-seed 7 without --split" in lines[0], lines
    assert not (tmp_path / "exp").exists()


def _shards(exp):
    return sorted(os.path.relpath(p, exp) for p in glob.glob(os.path.join(exp, "**", "*.tar"), recursive=True))


@pytest.mark.parametrize(
    "earlier, later",
    [
        (["--split=train=0.5,validation=0.25,test=0.25"], []),
        ([], ["--split=train=0.5,validation=0.5"]),
        (["--split=train=0.5,validation=0.25,test=0.25"], ["--split=train=0.5,validation=0.5"]),
    ],
    ids=["split-then-none", "none-then-split", "three-then-two"],
)
def test_a_rerun_in_another_layout_leaves_only_its_own_shards(table, tmp_path, earlier, later):
    """A reader's glob (EXP/**/*.tar) sees the new layout's shards only: the earlier layout's
    EXP/NNNNN.tar or EXP/NAME/NNNNN.tar are retired once the new ones are published."""
    out, _ = table
    exp = tmp_path / "exp"
    seed = ["--split-seed=1"]
    run_export(exp, out, *earlier, *(seed if earlier else []))
    before = _shards(exp)
    summary = run_export(exp, out, *later, *(seed if later else []))
    after = _shards(exp)
    assert after == sorted(s["name"] for s in summary["shards"]) and set(before) - set(after)
    import webdataset as wds

    samples = list(wds.WebDataset([os.path.join(exp, s) for s in after], shardshuffle=False))
    keys = [json.loads(s["json"])["key"] for s in samples]
    assert len(keys) == len(set(keys)) == summary["exported"]


def test_an_export_nested_in_exp_keeps_its_shards(table, tmp_path):
    """EXP/v1 is an export of its own (`--output EXP/v1`, its summary.json beside its shards), not a
    split of an earlier export into EXP. Before: an export into EXP deleted EXP/v1/NNNNN.tar (exit
    0), leaving EXP/v1/summary.json vouching for shards that were gone."""
    out, _ = table
    exp = tmp_path / "exp"
    inner = run_export(exp / "v1", out)
    kept = {name: (exp / "v1" / name).read_bytes() for name in _shards(exp / "v1")}
    assert sorted(kept) == sorted(s["name"] for s in inner["shards"])
    run_export(exp, out, "--split=train=0.5,validation=0.5")
    assert {name: (exp / "v1" / name).read_bytes() for name in _shards(exp / "v1")} == kept
    (exp / "train" / "notes.txt").write_text("a stray file does not make a split an export")
    run_export(exp, out)  # and a rerun without --split retires EXP's own split shards only
    assert {name: (exp / "v1" / name).read_bytes() for name in _shards(exp / "v1")} == kept
    assert not glob.glob(os.path.join(exp, "train", "*.tar"))


def test_a_split_named_as_an_export_nested_in_exp_is_one_line_exit_2(table, tmp_path, capsys):
    """EXP/train is an export of its own (`--output EXP/train`). Before: `--output EXP --split
    train=...,validation=...` renamed its shards onto EXP/train/NNNNN.tar, exit 0, and
    EXP/train/summary.json vouched for shards it had not written."""
    out, _ = table
    exp = tmp_path / "exp"
    run_export(exp / "train", out)
    kept = {name: (exp / "train" / name).read_bytes() for name in _shards(exp / "train")}
    capsys.readouterr()
    status = export.main(local_options(input=out, output=str(exp), format="webdataset", split=SPLIT))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "is an export of its own" in lines[0], lines
    assert {name: (exp / "train" / name).read_bytes() for name in _shards(exp / "train")} == kept


def test_a_rerun_with_the_same_split_keeps_its_shards_byte_for_byte(table, tmp_path):
    out, _ = table
    exp = tmp_path / "exp"
    run_export(exp, out, f"--split={SPLIT}")
    first = {name: (exp / name).read_bytes() for name in _shards(exp)}
    run_export(exp, out, f"--split={SPLIT}")
    assert {name: (exp / name).read_bytes() for name in _shards(exp)} == first


def test_a_fallback_member_is_exported_in_its_clusters_split(tmp_path):
    """--include canonical with a near cluster's canonical blob deleted: the next member stands in,
    in the split of its cluster (the canonical's), once."""
    out = str(tmp_path / "out")
    clusters = write_out(out)
    where = split_of_keys(
        read_splits(tmp_path / "a", run_export(tmp_path / "a", out, f"--split={SPLIT}", "--include=all"))
    )
    canonical, stand_in = clusters["c000"][:2]
    os.remove(next(p for p in glob.glob(f"{out}/blobs/**/*.jpg", recursive=True) if _sha_of(out, canonical) in p))
    summary = run_export(tmp_path / "b", out, f"--split={SPLIT}")
    found = read_splits(tmp_path / "b", summary)
    assert stand_in in found[where[canonical]] and summary["fallback_members"] == 1
    assert all(canonical not in keys for keys in found.values())
    assert summary["skipped"]["unreadable_blob"] == 1


def _sha_of(out, key):
    import pyarrow.parquet as pq

    rows = pq.read_table(os.path.join(out, "images")).to_pylist()
    return next(r["sha256"] for r in rows if r["key"] == key)


def test_without_split_the_summary_is_as_before(table, tmp_path):
    out, _ = table
    summary = run_export(tmp_path / "exp", out)
    assert not {"splits", "split_seed", "split_fractions"} & set(summary)
    assert _shards(tmp_path / "exp") == [s["name"] for s in summary["shards"]] and "/" not in "".join(
        _shards(tmp_path / "exp")
    )


def test_splits_are_counted_per_cluster_not_per_row():
    """Unit check of the rule the pipeline tests read back: group = cluster_id, else key."""
    from transforms.export.splits import split_of

    splits = (("train", 0.5), ("validation", 0.5))
    members = [{"key": f"k{n}", "cluster_id": "c1"} for n in range(20)]
    assert len({split_of(record, splits, 7) for record in members}) == 1
    alone = [{"key": f"k{n}", "cluster_id": None} for n in range(200)]
    counts = collections.Counter(split_of(record, splits, 7) for record in alone)
    assert set(counts) == {0, 1} and 60 < counts[0] < 140


def test_template_parameters_reach_the_split():
    """What the Flex Template launcher passes for --split and --split-seed becomes the job's config
    (the comma-separated value is one option, not a repeated one)."""
    from pipelines.launch import flex_template

    actions = flex_template.option_actions(export.ExportOptions)
    argv = flex_template.to_job_argv(
        ["--input=gs://b/out", "--output=gs://b/exp", "--format=webdataset", f"--split={SPLIT}", "--split_seed=3"],
        actions,
    )
    _, opts = export.JOB.parse(argv)
    config = export.export_config(opts)
    assert config.splits == (("train", 0.5), ("validation", 0.5)) and config.split_seed == 3


def test_nothing_to_export_with_splits_is_an_empty_export_with_balanced_books(tmp_path):
    from tests.synthetic_out import make_rows
    from tests.synthetic_out import write_out as write_synthetic

    rows = [r for r in make_rows(40) if r["status"] != "ok"]
    write_synthetic(str(tmp_path / "out"), rows)
    summary = run_export(tmp_path / "exp", str(tmp_path / "out"), f"--split={SPLIT}", fmt="hf-parquet")
    assert summary["exported"] == 0 and summary["rows_read"] == len(rows) == summary["skipped"]["not_ok"] > 0
    assert {name: split["shard_count"] for name, split in summary["splits"].items()} == {"train": 0, "validation": 0}
    assert export.load_hint(summary).startswith("nothing to load")


def test_the_printed_load_lines_are_python_whatever_the_split_names():
    """Split names may hold `-` or start with a digit (`val-1`, `2024`). Before: the job printed
    `val-1 = wds.WebDataset(...)`, which Python refuses (a user copies these lines)."""
    import ast

    def summary(fmt, names):
        shards = [{"name": f"{n}/00000.{'tar' if fmt == 'webdataset' else 'parquet'}"} for n in names]
        splits = {n: {"shards": [s]} for n, s in zip(names, shards, strict=True)}
        return {"output": "/exp", "format": fmt, "shards": shards, "splits": splits}

    names = ["train", "val-1", "2024", "class"]
    for fmt in ("webdataset", "hf-parquet"):
        hint = export.load_hint(summary(fmt, names))
        ast.parse("\n".join(line.strip() for line in hint.splitlines()))
        assert all(f"{name}/" in hint for name in names)
