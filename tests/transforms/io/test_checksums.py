import base64
import hashlib
import io

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import schema
from transforms.io.checksums import AttachExpectedHashes, parse_hash_list


def test_hash_list_hex_and_base64():
    sha = hashlib.sha256(b"x").digest()
    md5 = hashlib.md5(b"x").digest()
    text = (
        f"http://a/1\t{sha.hex()}\t{md5.hex()}\n"
        f"http://a/2\t{base64.b64encode(sha).decode()}\t{base64.b64encode(md5).decode()}\n"
        "http://a/3\tgarbage\tgarbage\n"
        "no-tabs\n"
    )
    entries = list(parse_hash_list(io.BytesIO(text.encode())))
    assert entries[0] == ("http://a/1", (sha.hex(), md5.hex()))
    assert entries[1] == ("http://a/2", (sha.hex(), md5.hex()))
    assert entries[2:] == [None, None]


def test_join_sets_expected_hashes_on_cc12m_rows_only(tmp_path):
    sha = hashlib.sha256(b"x").hexdigest()
    path = tmp_path / "hashes.tsv"
    path.write_text(f"http://a/1\t{sha}\t\n")
    rows = [
        schema.new_row("cc12m", "cc12m:1", "http://a/1"),
        schema.new_row("cc12m", "cc12m:2", "http://a/2"),
        schema.new_row("cc3m", "cc3m:1", "http://a/1"),
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(rows) | AttachExpectedHashes(str(path))
        assert_that(
            out | beam.Map(lambda r: (r["key"], r["expected_sha256"])),
            equal_to([("cc12m:1", sha), ("cc12m:2", None), ("cc3m:1", None)]),
        )
