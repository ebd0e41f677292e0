"""A user's malformed manifest or side file, end to end: one line naming the file and exit 2, or a
row with a status; never an "unexpected" exit 1 and never a record lost behind exit 0
(docs/ingest.md, "What can go wrong"; docs/integrity.md)."""

import bz2
import gzip
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from pipelines import ingest
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options
from tests.paths import FIXTURES, REPO
from transforms.io import table as table_module


def _serve(web, count):
    for n in range(count):
        web.routes[f"/b{n}.jpg"] = Reply(200, jpeg(500 + n), {"Content-Type": "image/jpeg"})
    return [web.url(f"/b{n}.jpg") for n in range(count)]


def _ingest(out, manifest, **options):
    args = local_options(
        manifest=manifest,
        output=out,
        **{"allow-network": "127.0.0.1/32", "no-progress": True, "no-report": True, "retries": 0, **options},
    )
    return ingest.main(args)


def _one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def _rows(out):
    return pq.read_table(table_module.list_table_files(out)).to_pylist()


def _refused(tmp_path, capsys, manifest_arg, *needles):
    """The ingest of `manifest_arg` is bad input: exit 2, one line holding every needle (never the
    runner's "unexpected <Error> ... (rerun with --debug ...)"), and no table written."""
    out = str(tmp_path / "out")
    assert _ingest(out, manifest_arg) == 2
    line = _one_line(capsys)
    assert all(needle in line for needle in needles) and "rerun with --debug" not in line, line
    assert not os.path.exists(os.path.join(out, "images"))


def test_a_long_captions_file_without_image_path_is_bad_input_naming_it(web, tmp_path, capsys):
    urls = _serve(web, 2)
    manifest = tmp_path / "cc12m.tsv"
    manifest.write_text("".join(f"{url}\tcaption\n" for url in urls))
    captions = tmp_path / "not_dreamlip.csv"
    captions.write_text("url,caption\nhttp://127.0.0.1/a.jpg,x\n")
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc12m={manifest}", **{"long-captions": str(captions)}) == 2
    line = _one_line(capsys)
    assert str(captions) in line and "Image Path" in line and "unexpected" not in line
    assert not os.path.exists(os.path.join(out, "images"))


def test_a_json_lines_record_nested_too_deep_is_an_invalid_row(web, tmp_path, capsys):
    urls = _serve(web, 1)
    manifest = tmp_path / "zero.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    manifest.write_text(f'{{"ImageKey": "1", "ImageUrl": "{urls[0]}"}}\n{deep}\n')
    out = str(tmp_path / "out")
    assert _ingest(out, f"zero={manifest}") == 0, capsys.readouterr().err
    rows = sorted(_rows(out), key=lambda r: r["source_line"])
    assert [(r["source_line"], r["status"]) for r in rows] == [(1, "ok"), (2, "invalid_url")]
    assert "line 2 is not JSON" in rows[1]["error"]


def test_an_open_images_field_past_the_csv_limit_is_bad_input_naming_file_and_line(web, tmp_path, capsys):
    urls = _serve(web, 2)
    manifest = tmp_path / "images.csv"
    # a stray quote in a big list runs a field past the csv module's limit: 128 KiB by default,
    # 16 MiB once the long-captions reader has raised it in this process (it is process-wide)
    filler = "x" * ((1 << 24) + 1)
    manifest.write_text(f'ImageID,OriginalURL,Title\na1,{urls[0]},"{filler}"\nb2,{urls[1]},t\n')
    _refused(tmp_path, capsys, f"openimages={manifest}", str(manifest), "line 2")


def test_an_open_images_quote_left_open_is_bad_input_not_records_swallowed(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "images.csv"
    # The quote opened in a1's Title is never closed: read leniently, b2 and c3 became part of
    # that title and the run ended with exit 0 and one row for three records.
    manifest.write_text(f'ImageID,OriginalURL,Title\na1,{urls[0]},"open\nb2,{urls[1]},t\nc3,{urls[2]},t\n')
    _refused(tmp_path, capsys, f"openimages={manifest}", str(manifest), "quote")


def test_an_open_images_list_without_its_header_is_bad_input_not_a_record_lost(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "images.csv"
    # No header line: the first record was read as the header (lost behind exit 0) and the other
    # two became invalid_url rows, "header has no OriginalURL column".
    manifest.write_text("".join(f"{n:016x},{url},title {n}\n" for n, url in enumerate(urls)))
    _refused(tmp_path, capsys, f"openimages={manifest}", str(manifest), "OriginalURL")


def test_a_json_array_followed_by_a_record_is_bad_input_not_a_record_lost(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "zero.json"
    # The array reader skipped every top-level value that is not an array: key 2 was lost, exit 0.
    manifest.write_text(
        f'[{{"ImageKey": "1", "ImageUrl": "{urls[0]}"}}]\n{{"ImageKey": "2", "ImageUrl": "{urls[1]}"}}\n'
    )
    _refused(tmp_path, capsys, f"zero={manifest}", str(manifest), "not an array")


def test_json_arrays_in_a_row_are_all_read(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "zero.json"
    records = [json.dumps({"ImageKey": str(n), "ImageUrl": url, "Title": "a]\n[b"}) for n, url in enumerate(urls)]
    manifest.write_text(f"[{records[0]}, {records[1]}]\n[{records[2]}]")
    out = str(tmp_path / "out")
    assert _ingest(out, f"zero={manifest}") == 0, capsys.readouterr().err
    assert sorted((r["key"], r["status"]) for r in _rows(out)) == [("zero:0", "ok"), ("zero:1", "ok"), ("zero:2", "ok")]


def test_an_output_inside_a_manifest_glob_is_refused_not_read_as_manifest_lines(web, tmp_path, capsys):
    urls = _serve(web, 2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cc3m.tsv").write_text("".join(f"photo\t{url}\n" for url in urls))
    out = str(inputs / "out")
    # Before: a first run read its own OUT/_LEASE as a manifest, a second one its blobs, Parquet
    # files and summary.json too (hundreds of invalid_url rows), exit 0.
    assert _ingest(out, f"cc3m={inputs}/**") == 2
    line = _one_line(capsys)
    assert f"{out}/_LEASE" in line and "inside --output" in line and "unexpected" not in line
    assert not os.path.exists(os.path.join(out, "images"))
    assert _ingest(out, f"cc3m={inputs}/*.tsv") == 0, capsys.readouterr().err  # beside OUT: fine
    capsys.readouterr()
    table = sorted(os.listdir(os.path.join(out, "images")))
    for glob in (f"{inputs}/**", f"{inputs}/out/../**/*.parquet"):
        assert _ingest(out, f"cc3m={glob}") == 2
        assert "inside --output" in _one_line(capsys)
    os.symlink(out, tmp_path / "link")
    for labels in (f"{inputs}/*/summary.json", f"{tmp_path}/link/summary.json"):  # a side file inside OUT
        assert _ingest(out, f"cc3m={inputs}/*.tsv", **{"cc3m-labels": labels}) == 2
        assert "--cc3m-labels" in (line := _one_line(capsys)) and "summary.json lies inside --output" in line
    assert _ingest(str(tmp_path / "link"), f"cc3m={inputs}/**") == 2  # OUT spelt through a symlink
    assert "inside --output" in _one_line(capsys)
    assert sorted(os.listdir(os.path.join(out, "images"))) == table  # the refusals left the table


def test_a_gs_output_inside_a_manifest_glob_is_refused(web, gcs_emulator, tmp_path, capsys):
    urls = _serve(web, 1)
    bucket = gcs_emulator.bucket("out-in-glob")
    bucket.blob("in/cc3m.tsv").upload_from_string(f"photo\t{urls[0]}\n")
    out = "gs://out-in-glob/in/out"
    assert _ingest(out, "cc3m=gs://out-in-glob/in/**") == 2
    line = _one_line(capsys)
    assert f"{out}/_LEASE" in line and "inside --output" in line
    assert bucket.get_blob("in/out/_LEASE") is None


def test_a_json_array_nested_thousands_deep_is_an_invalid_row_in_bounded_memory(web, tmp_path):
    urls = _serve(web, 1)
    manifest = tmp_path / "zero.json"
    # Before: ijson keeps the path of every open level ("item.item..."), memory the square of the
    # depth: 30,000 `[` in 60 KB took 2.3 GB, 100,000 a MemoryError or the OOM killer.
    deep = "[" * 30_000 + "]" * 30_000
    manifest.write_text(f'[{{"ImageKey": "1", "ImageUrl": "{urls[0]}"}}, {deep}]')
    out = str(tmp_path / "out")
    args = ["--manifest", f"zero={manifest}", "--output", out, "--allow-network", "127.0.0.1/32"]
    with open(tmp_path / "stderr", "w+b") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.ingest", *args, "--no-progress", "--no-report", "--retries", "0"],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(process.pid, 0)  # the peak memory of this one process
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode()
    assert process.returncode == 0, stderr
    assert usage.ru_maxrss < 1_200_000, f"peak memory {usage.ru_maxrss // 1024} MB"  # KiB
    rows = {r["status"]: r for r in _rows(out)}
    assert sorted(rows) == ["invalid_url", "ok"] and rows["ok"]["key"] == "zero:1"
    assert rows["invalid_url"]["key"] == f"zero:{manifest}#1-"
    assert "nested deeper than" in rows["invalid_url"]["error"]


def test_tsv_manifests_with_bare_cr_line_ends_give_a_row_per_line(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # Old Mac line ends ("\r" only): the whole file was one line, one row (a giant caption), exit 0.
    cc3m, cc12m = tmp_path / "cc3m.tsv", tmp_path / "cc12m.tsv"
    cc3m.write_bytes("".join(f"photo {n}\t{url}\r" for n, url in enumerate(urls)).encode())
    # cc12m: a blank line, and no end after the last line
    cc12m.write_bytes(f"{urls[0]}\tphoto 0\r\r{urls[1]}\tphoto 1\r{urls[2]}\tphoto 2".encode())
    out = str(tmp_path / "out")
    assert _ingest(out, [f"cc3m={cc3m}", f"cc12m={cc12m}"]) == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["caption"], r["url"], r["status"]) for r in _rows(out))
    assert rows == [
        ("cc12m:1", "photo 0", urls[0], "ok"),
        ("cc12m:3", "photo 1", urls[1], "ok"),
        ("cc12m:4", "photo 2", urls[2], "ok"),
        *((f"cc3m:{n + 1}", f"photo {n}", url, "ok") for n, url in enumerate(urls)),
    ]


def test_a_tsv_manifest_with_lf_line_ends_keeps_a_stray_cr_inside_its_caption(web, tmp_path, capsys):
    urls = _serve(web, 2)
    manifest = tmp_path / "cc12m.tsv"
    manifest.write_bytes(f"{urls[0]}\tfirst\rhalf\n{urls[1]}\tsecond\r\n".encode())
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc12m={manifest}") == 0, capsys.readouterr().err
    assert sorted((r["key"], r["caption"]) for r in _rows(out)) == [("cc12m:1", "first\rhalf"), ("cc12m:2", "second")]


def test_an_empty_compressed_manifest_is_bad_input_naming_it(web, tmp_path, capsys):
    # A 0-byte .gz (a download that never started) is no gzip stream at all: it was read as an
    # empty dataset, exit 0. A plain empty manifest stays an empty dataset (docs/integrity.md).
    for suffix in ("gz", "bz2", "xz", "zst"):
        manifest = tmp_path / f"cc3m.tsv.{suffix}"
        manifest.write_bytes(b"")
        _refused(tmp_path, capsys, f"cc3m={manifest}", f"manifest {manifest}", "truncated or corrupt", "empty")


def test_a_side_file_of_the_wrong_kind_is_bad_input_naming_option_and_file(web, tmp_path, capsys):
    urls = _serve(web, 1)
    files = {
        "cc3m.tsv": f"a photo\t{urls[0]}\n",
        "cc12m.tsv": f"{urls[0]}\ta photo\n",
        "images.csv": f"ImageID,Subset,OriginalURL,Title\n0006400c1c224e19,train,{urls[0]},t\n",
        "labels.csv": "ImageID,Source,LabelName,Confidence\n0006400c1c224e19,machine,/m/07j7r,0.9\n",
        "synsets.txt": "n01440764 tench, Tinca tinca\n",
        "captions.json": '[{"filename": "n01440764_1.JPEG", "wnid": "n01440764", "title": "t"}]\n',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    manifest = f"cc3m={tmp_path / 'cc3m.tsv'}"
    # Before: each ran with exit 0, the rows without their labels, names or hashes.
    for option, wrong in [
        ("cc3m-labels", "cc3m.tsv"),  # the manifest given as its labels
        ("cc3m-labels", "labels.csv"),
        ("cc12m-hashes", "cc12m.tsv"),
        ("cc12m-hashes", "cc3m.tsv"),
        ("openimages-labels", "images.csv"),
        ("openimages-labels", "cc3m.tsv"),
        ("openimages-classes", "images.csv"),
        ("openimages-classes", "labels.csv"),
        ("openimages-classes", "synsets.txt"),
        ("imagenet-synsets", "captions.json"),
        ("imagenet-synsets", "labels.csv"),
    ]:
        path = str(tmp_path / wrong)
        out = str(tmp_path / "out")
        assert _ingest(out, manifest, **{option: path}) == 2, (option, wrong, capsys.readouterr().err)
        line = _one_line(capsys)
        assert f"--{option} {path}: not " in line and "unexpected" not in line, line
        assert not os.path.exists(os.path.join(out, "images"))


def test_side_files_of_the_right_kind_pass_the_kind_check(tmp_path):
    from transforms.io import side_files  # noqa: PLC0415

    sample = os.path.join(REPO, "pipelines", "demo", "sample")
    hashes = tmp_path / "hashes.tsv"
    hashes.write_text(f"http://a/1.jpg\t{'ab' * 32}\t{'cd' * 16}\nhttp://a/2.jpg\t\t0Sad+xMj2ttXM1U8meEJ0A==\n")
    given = {
        "--cc12m-hashes": [str(hashes)],
        "--cc3m-labels": ["cc3m_labels.tsv", f"{sample}/cc3m-labels.tsv"],
        "--openimages-classes": [
            "openimages_v1_dict.csv",
            "openimages_class-descriptions.csv",
            "oidv7-class-descriptions.csv",
            f"{sample}/openimages-class-descriptions.csv",
        ],
        "--openimages-labels": [
            "openimages_labels_machine.csv",
            "openimages_labels_human.csv",
            "openimages_labels_old.csv",
            "machine_ann_2016_08_labels.csv",
            "human_ann_2016_08_labels.csv",
            f"{sample}/*-labels*.csv",
        ],
        "--imagenet-synsets": ["LOC_synset_mapping.txt", f"{sample}/LOC_synset_mapping.txt"],
    }
    for flag, paths in given.items():
        for path in paths:
            side_files.check_side_file(flag, os.path.join(FIXTURES, path))


DREAMLIP_HEADER = "Image Path,raw_caption,shortIB_captions,longIB_captions,shortSV_captions,longSV_captions\n"


def test_a_long_captions_quote_left_open_is_bad_input_naming_file_and_line(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text("".join(f"photo {n}\t{url}\n" for n, url in enumerate(urls)))
    captions = tmp_path / "long.csv"
    # Read leniently, the quote opened in b1's raw caption ran to the end of the file: the later
    # records became its caption and their rows lost their long captions, exit 0.
    records = [f"{url},raw {n},s,l,s,l\n" for n, url in enumerate(urls)]
    records[1] = records[1].replace(",raw", ',"raw')
    captions.write_text(DREAMLIP_HEADER + "".join(records))
    # Past the csv module's field limit the same mistake was "unexpected Error", exit 1.
    big = tmp_path / "long_big.csv"
    big.write_text(DREAMLIP_HEADER + f'{urls[0]},"raw\n' + "x" * (1 << 24) + "\n")
    for path in (captions, big):
        out = str(tmp_path / "out")
        assert _ingest(out, f"cc3m={manifest}", **{"long-captions": str(path)}) == 2
        line = _one_line(capsys)
        assert f"--long-captions {path}: unreadable CSV at line" in line and "quote" in line, line
        assert not os.path.exists(os.path.join(out, "images"))


def test_an_open_images_class_names_quote_left_open_is_bad_input_naming_the_file(web, tmp_path, capsys):
    urls = _serve(web, 3)
    manifest = tmp_path / "images.csv"
    manifest.write_text("ImageID,OriginalURL\n" + "".join(f"{n:016x},{url}\n" for n, url in enumerate(urls)))
    labels = tmp_path / "labels.csv"
    lines = "".join(f"{n:016x},machine,/m/0{n},0.9\n" for n in range(3))
    labels.write_text("ImageID,Source,LabelName,Confidence\n" + lines)
    classes = tmp_path / "classes.csv"
    # Read leniently, /m/01's name was 'One, open\n/m/02,Two' and /m/02 had none, exit 0.
    classes.write_text('/m/00,Zero\n/m/01,"One, open\n/m/02,Two\n')
    out = str(tmp_path / "out")
    options = {"openimages-labels": str(labels), "openimages-classes": str(classes)}
    assert _ingest(out, f"openimages={manifest}", **options) == 2
    line = _one_line(capsys)
    assert f"--openimages-classes {classes}: unreadable CSV at line" in line and "quote" in line, line
    assert not os.path.exists(os.path.join(out, "images"))


def test_a_compressed_file_not_named_so_or_compressed_twice_is_bad_input_naming_it(web, tmp_path, capsys):
    urls = _serve(web, 3)
    tsv = "".join(f"photo {n}\t{url}\n" for n, url in enumerate(urls)).encode()
    zero = "".join(json.dumps({"ImageKey": str(n), "ImageUrl": url}) + "\n" for n, url in enumerate(urls)).encode()
    # Before: each was read as text, a few rows of binary garbage (invalid_url) for the 3 records,
    # exit 0 (a download saved without its .gz, or gzipped again by the server's Content-Encoding).
    cases = {
        "cc3m.tsv": (gzip.compress(tsv), "gzip", "name it"),
        "cc3m-twice.tsv.gz": (gzip.compress(gzip.compress(tsv)), "gzip", "compressed twice"),
        "zero.jsonl": (bz2.compress(zero), "bzip2", "name it"),
    }
    for name, (data, what, advice) in cases.items():
        (tmp_path / name).write_bytes(data)
        kind = name.split(".")[0].split("-")[0]
        _refused(tmp_path, capsys, f"{kind}={tmp_path / name}", str(tmp_path / name), what, advice)
    good = tmp_path / "good.tsv"
    good.write_bytes(tsv)
    for option, name in (("cc3m-labels", "labels.tsv"), ("long-captions", "long.csv")):
        side = tmp_path / name
        side.write_bytes(gzip.compress(b"whatever\n"))
        out = str(tmp_path / "out")
        assert _ingest(out, f"cc3m={good}", **{option: str(side)}) == 2
        line = _one_line(capsys)
        assert f"--{option} {side}: " in line and "gzip" in line and "name it" in line, line


def test_a_plain_file_named_gz_is_bad_input_saying_so_even_with_accept_truncated(web, tmp_path, capsys):
    urls = _serve(web, 3)
    tsv = "".join(f"photo {n}\t{url}\n" for n, url in enumerate(urls)).encode()
    # Before: "compressed file is truncated or corrupt before its first line ...; --accept-truncated
    # ingests the 0 records read before it", and with --accept-truncated 0 rows of 3, exit 0.
    for name, data, needle in (("cc3m.tsv.gz", tsv, "not gzip"), ("cc3m.tsv.bz2", gzip.compress(tsv), "gzip data")):
        manifest = tmp_path / name
        manifest.write_bytes(data)
        for accept in (False, True):
            out = str(tmp_path / "out")
            assert _ingest(out, f"cc3m={manifest}", **({"accept-truncated": True} if accept else {})) == 2
            line = _one_line(capsys)
            assert str(manifest) in line and needle in line and "--accept-truncated" not in line, line
            assert not os.path.exists(os.path.join(out, "images"))
    labels = tmp_path / "labels.tsv.gz"
    labels.write_bytes(b"caption\thttp://127.0.0.1/a.jpg\tdog\t/m/0bt9lr\t1\n")
    (tmp_path / "good.tsv").write_bytes(tsv)
    assert _ingest(str(tmp_path / "out"), f"cc3m={tmp_path / 'good.tsv'}", **{"cc3m-labels": str(labels)}) == 2
    assert f"{labels}: the file is not gzip data" in (line := _one_line(capsys)), line


def test_cc3m_and_cc12m_manifests_given_as_each_other_are_bad_input_naming_the_kind(web, tmp_path, capsys):
    urls = _serve(web, 3)
    cc3m, cc12m = tmp_path / "cc3m.tsv", tmp_path / "cc12m.tsv"
    cc3m.write_text("".join(f"photo {n}\t{url}\n" for n, url in enumerate(urls)))
    cc12m.write_text("".join(f"{url}\tphoto {n}\n" for n, url in enumerate(urls)))
    # Before: every row invalid_url ("no scheme"), its caption in the url column, exit 0.
    _refused(tmp_path, capsys, f"cc12m={cc3m}", str(cc3m), "not a CC12M manifest", "--manifest cc3m=")
    _refused(tmp_path, capsys, f"cc3m={cc12m}", str(cc12m), "not a CC3M manifest", "--manifest cc12m=")
    # one line of its kind among others passes: the rows tell the rest
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text(cc3m.read_text() + f"{urls[0]}\tphoto\n")
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc12m={mixed}") == 0, capsys.readouterr().err
    assert sorted(r["status"] for r in _rows(out)) == ["invalid_url"] * 3 + ["ok"]


def test_zero_and_imagenet_captions_manifests_given_as_each_other_are_bad_input_naming_the_kind(tmp_path, capsys):
    zero, captions = os.path.join(FIXTURES, "zero.jsonl"), os.path.join(FIXTURES, "imagenet_captions.json")
    # Before: every row invalid_url ("missing filename" / "missing ImageKey"), exit 0.
    _refused(tmp_path, capsys, f"imagenet_captions={zero}", zero, "not an ImageNet-Captions file", "--manifest zero=")
    _refused(
        tmp_path, capsys, f"zero={captions}", captions, "not a Zero (CCMB) manifest", "--manifest imagenet_captions="
    )


def test_a_manifest_that_is_a_pipe_is_bad_input_not_read_empty(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # What `--manifest cc3m=<(zcat cc3m.tsv.gz)` gives: /dev/fd/63, a pipe its writer has closed.
    read_end, write_end = os.pipe()
    os.write(write_end, "".join(f"photo {n}\t{url}\n" for n, url in enumerate(urls)).encode())
    os.close(write_end)
    pipe = f"/dev/fd/{read_end}"
    out = str(tmp_path / "out")
    try:
        # Before: the checks before the pipeline read the pipe's bytes and the pipeline found
        # nothing left: 0 rows for 3 records, exit 0 (a manifest is read more than once).
        assert _ingest(out, f"cc3m={pipe}") == 2
    finally:
        os.close(read_end)
    line = _one_line(capsys)
    assert pipe in line and "not a regular file" in line, line
    assert not os.path.exists(os.path.join(out, "images"))


def test_one_file_matched_under_two_kinds_is_bad_input_naming_it(web, tmp_path, capsys):
    # Before: `zero=DIR/*` read the CC12M file as JSON lines too: 2 ok + 2 invalid_url rows, exit 0.
    urls = _serve(web, 2)
    (tmp_path / "in").mkdir()
    manifest = tmp_path / "in" / "m.tsv"
    manifest.write_text("".join(f"{url}\tcaption\n" for url in urls))
    (tmp_path / "in" / "z.jsonl").write_text(json.dumps({"ImageKey": "k", "ImageUrl": urls[0]}) + "\n")
    both = [f"zero={tmp_path / 'in' / '*'}", f"cc12m={manifest}"]
    _refused(tmp_path, capsys, both, str(manifest), "--manifest zero=", "--manifest cc12m=", "one kind")


def test_openimages_lists_joined_by_cat_give_a_row_per_record(web, tmp_path, capsys):
    # `cat train.csv test-v3.csv`: before, the inner header was a row (openimages:ImageID,
    # invalid_url) and the V3 record after it invalid ("11 fields, header has 12"): 3 rows for 2
    # records, 1 ok, exit 0.
    urls = _serve(web, 2)
    v3 = "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,OriginalMD5,"
    manifest = tmp_path / "all.csv"
    manifest.write_text(
        f"{v3}Thumbnail300KURL,Rotation\n000026e7ee790996,train,{urls[0]},,,,,,1,,,90\n"
        f"{v3}Thumbnail300KURL\n000c4d66ce89aa69,test,{urls[1]},,,,,,1,,\n"
    )
    out = str(tmp_path / "out")
    assert _ingest(out, f"openimages={manifest}") == 0, capsys.readouterr().err
    assert sorted((r["key"], r["url"], r["status"]) for r in _rows(out)) == [
        ("openimages:000026e7ee790996", urls[0], "ok"),
        ("openimages:000c4d66ce89aa69", urls[1], "ok"),
    ]
