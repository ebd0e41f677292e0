"""Line ends and text encodings of manifests and side files, end to end (docs/ingest.md, "Line ends
and encodings"): a file with classic Mac OS line ends (CR only) or saved as UTF-16 ("Unicode
text") gives the same rows, keys, line numbers and labels as its UTF-8, LF twin, never one row or
garbage captions behind exit 0."""

import codecs
import gzip
import json

from tests.pipelines.test_ingest_bad_input import _ingest, _rows, _serve


def _zero_record(n, url):
    return json.dumps({"ImageKey": str(n), "ImageUrl": url, "Title": f"photo {n}"}, ensure_ascii=False)


def test_json_lines_manifests_with_bare_cr_line_ends_give_a_row_per_line(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # Read on LF, the whole file was one line: one invalid row ("Extra data"), exit 0.
    zero, imagenet = tmp_path / "zero.jsonl", tmp_path / "imagenet_captions.jsonl"
    zero.write_bytes("".join(_zero_record(n, url) + "\r" for n, url in enumerate(urls)).encode())
    records = [{"filename": f"f{n}.JPEG", "wnid": "n01440764", "title": f"t{n}"} for n in range(2)]
    imagenet.write_bytes("\r\r".join(json.dumps(r) for r in records).encode())  # a blank line, no end
    out = str(tmp_path / "out")
    assert _ingest(out, [f"zero={zero}", f"imagenet_captions={imagenet}"]) == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["source_line"], r["caption"], r["status"]) for r in _rows(out))
    assert rows == [
        ("imagenet_captions:f0.JPEG", 1, "t0", "invalid_url"),  # no --imagenet-root: invalid, kept
        ("imagenet_captions:f1.JPEG", 3, "t1", "invalid_url"),
        *((f"zero:{n}", n + 1, f"photo {n}", "ok") for n in range(3)),
    ]


def test_side_files_with_bare_cr_line_ends_are_read_a_line_each(web, tmp_path, capsys):
    urls = _serve(web, 3)
    cc3m, cc12m = tmp_path / "cc3m.tsv", tmp_path / "cc12m.tsv"
    cc3m.write_text("".join(f"c{n}\t{url}\n" for n, url in enumerate(urls)))
    cc12m.write_text("".join(f"{url}\tc{n}\n" for n, url in enumerate(urls)))
    # Read on LF, only the last line's labels were attached and only the first URL's sha256.
    labels = "".join(f"c{n}\t{url}\tdog\t/m/0bt9lr\t1\r" for n, url in enumerate(urls)).encode()
    (tmp_path / "labels.tsv").write_bytes(labels)
    (tmp_path / "labels.tsv.gz").write_bytes(gzip.compress(labels.replace(b"dog\t/m/0bt9lr", b"pet\t/m/pet")))
    hashes = tmp_path / "hashes.tsv"
    hashes.write_bytes("".join(f"{url}\t{'0' * 64}\t{'0' * 32}\r" for url in urls).encode())
    out = str(tmp_path / "out")
    code = _ingest(
        out,
        [f"cc3m={cc3m}", f"cc12m={cc12m}"],
        **{"cc3m-labels": str(tmp_path / "labels.tsv*"), "cc12m-hashes": str(hashes)},
    )
    assert code == 0, capsys.readouterr().err
    rows = {r["key"]: r for r in _rows(out)}
    assert sorted(rows) == [f"{d}:{n}" for d in ("cc12m", "cc3m") for n in (1, 2, 3)]
    for n in (1, 2, 3):
        assert sorted(label["id"] for label in rows[f"cc3m:{n}"]["labels"]) == ["/m/0bt9lr", "/m/pet"]
        cc12m_row = rows[f"cc12m:{n}"]
        assert (cc12m_row["expected_sha256"], cc12m_row["expected_md5"], cc12m_row["status"]) == (
            "0" * 64,
            "0" * 32,
            "hash_mismatch",
        )


def test_utf16_manifests_and_side_files_read_as_their_utf8_twins(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # A spreadsheet's "Unicode text": UTF-16 with a byte-order mark. Read as UTF-8, every row
    # was invalid, URL and caption NUL-riddled, exit 0.
    cc3m, cc12m, zero = tmp_path / "cc3m.txt", tmp_path / "cc12m.txt", tmp_path / "zero.jsonl"
    cc3m.write_bytes("".join(f"café {n}\t{url}\r\n" for n, url in enumerate(urls)).encode("utf-16"))
    cc12m.write_bytes(("\ufeff" + "".join(f"{url}\t“{n}”\n" for n, url in enumerate(urls))).encode("utf-16-be"))
    zero.write_bytes(
        ("\ufeff" + "".join(_zero_record(n, url) + "\n" for n, url in enumerate(urls))).encode("utf-16-le")
    )
    labels = tmp_path / "labels.tsv"
    labels.write_bytes("".join(f"c\t{url}\tchien\t/m/0bt9lr\t1\r\n" for url in urls).encode("utf-16"))
    out = str(tmp_path / "out")
    code = _ingest(out, [f"cc3m={cc3m}", f"cc12m={cc12m}", f"zero={zero}"], **{"cc3m-labels": str(labels)})
    assert code == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["source_line"], r["url"], r["caption"], r["status"]) for r in _rows(out))
    assert rows == [
        *((f"cc12m:{n + 1}", n + 1, url, f"“{n}”", "ok") for n, url in enumerate(urls)),
        *((f"cc3m:{n + 1}", n + 1, url, f"café {n}", "ok") for n, url in enumerate(urls)),
        *((f"zero:{n}", n + 1, url, f"photo {n}", "ok") for n, url in enumerate(urls)),
    ]
    assert all(r["labels"][0]["name"] == "chien" for r in _rows(out) if r["dataset"] == "cc3m")


def test_a_cp1252_manifest_keeps_every_row_with_its_bad_bytes_replaced(web, tmp_path, capsys):
    urls = _serve(web, 2)
    manifest = tmp_path / "cc12m.tsv"
    manifest.write_bytes("".join(f"{url}\tcafé “{n}”\n" for n, url in enumerate(urls)).encode("cp1252"))
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc12m={manifest}") == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["caption"], r["status"]) for r in _rows(out))
    assert rows == [(f"cc12m:{n + 1}", f"caf\ufffd \ufffd{n}\ufffd", "ok") for n in range(2)]


def test_utf16_without_a_byte_order_mark_and_utf32_manifests_read_as_their_utf8_twins(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # Read as UTF-8, every row was invalid, its URL and caption NUL-riddled, and a UTF-16-LE or
    # UTF-32-LE file gave one more row (the NULs after its last LF), exit 0.
    encodings = {
        "cc3m": ("utf-16-le", b""),
        "cc12m": ("utf-16-be", b""),
        "zero": ("utf-32-le", codecs.BOM_UTF32_LE),  # its mark starts as UTF-16-LE's does
        "imagenet_captions": ("utf-32-be", codecs.BOM_UTF32_BE),
    }
    texts = {
        "cc3m": "".join(f"café {n}\t{url}\n" for n, url in enumerate(urls)),
        "cc12m": "".join(f"{url}\t“{n}” 中文\n" for n, url in enumerate(urls)),
        "zero": "".join(_zero_record(n, url) + "\n" for n, url in enumerate(urls)),
        "imagenet_captions": json.dumps({"filename": "f.JPEG", "wnid": "n01440764", "title": "鱼"}) + "\n",
    }
    manifests = []
    for kind, (encoding, bom) in encodings.items():
        (tmp_path / kind).mkdir()
        path = tmp_path / kind / "a.txt"
        path.write_bytes(bom + texts[kind].encode(encoding))
        manifests.append(f"{kind}={tmp_path / kind / '*.txt'}")
    # UTF-32 without a mark, and a second cc3m file: keys then name the file
    (tmp_path / "cc3m" / "b.txt").write_bytes(texts["cc3m"].encode("utf-32-be"))
    out = str(tmp_path / "out")
    assert _ingest(out, manifests) == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["source_line"], r["url"], r["caption"], r["status"]) for r in _rows(out))
    assert rows == [
        *((f"cc12m:{n + 1}", n + 1, url, f"“{n}” 中文", "ok") for n, url in enumerate(urls)),
        *((f"cc3m:{f}:{n + 1}", n + 1, u, f"café {n}", "ok") for f in ("a.txt", "b.txt") for n, u in enumerate(urls)),
        ("imagenet_captions:f.JPEG", 1, None, "鱼", "invalid_url"),  # no --imagenet-root
        *((f"zero:{n}", n + 1, url, f"photo {n}", "ok") for n, url in enumerate(urls)),
    ]


def test_line_ends_that_change_partway_give_a_row_per_line(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # Files joined with `cat`, one with LF line ends and one with CR only: read on LF, the CR
    # part was one line, one row with the last URL and the rest in its caption, exit 0.
    lf = [f"lf {n}\t{url}\n" for n, url in enumerate(urls)]
    cr = [f"cr {n}\t{url}\r" for n, url in enumerate(urls)]
    cc3m, cc12m, zero = tmp_path / "cc3m.tsv", tmp_path / "cc12m.tsv", tmp_path / "zero.jsonl"
    cc3m.write_bytes("".join(lf + cr + lf[:1]).encode())
    cc12m.write_bytes(("".join(f"{url}\tcr {n}\r" for n, url in enumerate(urls)) + f"{urls[0]}\tlf\r\n").encode())
    zero.write_bytes("".join(_zero_record(n, url) + ("\n" if n else "\r") for n, url in enumerate(urls)).encode())
    out = str(tmp_path / "out")
    assert _ingest(out, [f"cc3m={cc3m}", f"cc12m={cc12m}", f"zero={zero}"]) == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["source_line"], r["url"], r["caption"]) for r in _rows(out))
    assert rows == [
        *((f"cc12m:{n + 1}", n + 1, url, f"cr {n}") for n, url in enumerate(urls)),
        ("cc12m:4", 4, urls[0], "lf"),
        *((f"cc3m:{n + 1}", n + 1, url, f"lf {n}") for n, url in enumerate(urls)),
        *((f"cc3m:{n + 4}", n + 4, url, f"cr {n}") for n, url in enumerate(urls)),
        ("cc3m:7", 7, urls[0], "lf 0"),
        *((f"zero:{n}", n + 1, url, f"photo {n}") for n, url in enumerate(urls)),
    ]


def test_files_joined_without_a_last_newline_give_an_invalid_row_not_a_lost_record(web, tmp_path, capsys):
    urls = _serve(web, 4)
    # `cat a.tsv b.tsv > m.tsv`, a.tsv without a newline at its end: a's last record and b's first
    # share line 2. Before: one ok row of one of the two URLs, the other inside its caption, exit 0.
    cc3m, cc12m = tmp_path / "cc3m.tsv", tmp_path / "cc12m.tsv"
    cc3m.write_text(f"a\t{urls[0]}\nb\t{urls[1]}" + f"c\t{urls[2]}\nd\t{urls[3]}\t\n")  # and an empty last column
    cc12m.write_text(f"{urls[0]}\ta\n{urls[1]}\tb" + f"{urls[2]}\tc\n\t{urls[3]}\td\n")  # and an empty first column
    out = str(tmp_path / "out")
    assert _ingest(out, [f"cc3m={cc3m}", f"cc12m={cc12m}"]) == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["url"], r["status"], (r["error"] or "")[:39]) for r in _rows(out))
    joined = "malformed line: two records run togethe"
    assert rows == [
        ("cc12m:1", urls[0], "ok", ""),
        ("cc12m:2", urls[1], "invalid_url", joined),
        ("cc12m:3", urls[3], "ok", ""),
        ("cc3m:1", urls[0], "ok", ""),
        ("cc3m:2", urls[2], "invalid_url", joined),
        ("cc3m:3", urls[3], "ok", ""),
    ]


def test_a_cp1252_json_array_keeps_every_record_with_its_bad_bytes_replaced(web, tmp_path, capsys):
    urls = _serve(web, 3)
    # Before: yajl stopped at the first byte that is not UTF-8: 1 ok row, then one invalid row
    # "not JSON after 1 records" for the 2 records left, exit 0.
    records = [{"ImageKey": str(n), "ImageUrl": url, "Title": f"café {n}"} for n, url in enumerate(urls)]
    manifest = tmp_path / "zero.json"
    manifest.write_bytes(json.dumps(records, ensure_ascii=False).encode("cp1252"))
    out = str(tmp_path / "out")
    assert _ingest(out, f"zero={manifest}") == 0, capsys.readouterr().err
    rows = sorted((r["key"], r["caption"], r["status"]) for r in _rows(out))
    assert rows == [(f"zero:{n}", f"caf\ufffd {n}", "ok") for n in range(3)]
