import hashlib

import imagehash
from PIL import Image

from pipelines.demo.sample_site import encode, jpeg, picture, pixel_bomb_png
from transforms import schema
from transforms.image_checks import hash_hex, inspect_image, verify_and_hash


def fetched(body, **fields):
    row = schema.new_row("cc3m", "cc3m:1", "http://x/a.jpg", status=schema.OK, **fields)
    row["_body"] = body
    return row


def test_ok_row_gets_every_content_column():
    body = jpeg(4, (400, 300))
    row = verify_and_hash(fetched(body))
    assert row["status"] == schema.OK and row["error"] is None
    assert row["sha256"] == hashlib.sha256(body).hexdigest()
    assert row["md5"] == hashlib.md5(body).hexdigest()
    assert (row["width"], row["height"], row["format"], row["size_bytes"]) == (400, 300, "JPEG", len(body))
    assert len(row["phash"]) == 16 and len(row["dhash"]) == 16
    imagehash.hex_to_hash(row["phash"])  # readable by imagehash, as the contract promises


def test_draft_decode_stays_within_two_bits_of_full_decode():
    for seed in range(12):
        body = jpeg(seed, (1200, 900))
        fast = imagehash.hex_to_hash(inspect_image(body, draft=True).phash)
        full = imagehash.phash(Image.open(__import__("io").BytesIO(body)).convert("L"))
        assert fast - full <= 2, (seed, fast - full)


def test_png_and_jpeg_of_one_picture_hash_alike():
    a = inspect_image(encode(picture(8), "PNG"))
    b = inspect_image(jpeg(8))
    assert imagehash.hex_to_hash(a.phash) - imagehash.hex_to_hash(b.phash) <= 4


def test_html_is_not_image():
    row = verify_and_hash(fetched(b"<html>gone</html>", content_type="text/html"))
    assert row["status"] == schema.NOT_IMAGE and "text/html" in row["error"]
    assert row["sha256"]  # the bytes are still described


def test_empty_body_is_not_image():
    assert verify_and_hash(fetched(b""))["status"] == schema.NOT_IMAGE


def test_truncated_jpeg_is_decode_error():
    row = verify_and_hash(fetched(jpeg(5, (640, 480))[:3000]))
    assert row["status"] == schema.DECODE_ERROR and "truncated" in row["error"]


def test_pixel_bomb_is_refused_before_decoding():
    row = verify_and_hash(fetched(pixel_bomb_png(12000, 12000)), max_pixels=10_000_000)
    assert row["status"] == schema.DECODE_ERROR and "decompression bomb" in row["error"]
    assert (row["width"], row["height"]) == (12000, 12000)
    # Far beyond PIL's own limit, PIL refuses at the header already: the same status.
    row = verify_and_hash(fetched(pixel_bomb_png(40000, 40000)))
    assert row["status"] == schema.DECODE_ERROR and "decompression bomb" in row["error"]


def test_corrupt_header_is_decode_error():
    body = bytearray(encode(picture(1), "PNG"))
    body[20:40] = b"\xff" * 20
    assert verify_and_hash(fetched(bytes(body)))["status"] == schema.DECODE_ERROR


def test_published_hash_mismatch():
    body = jpeg(6)
    row = verify_and_hash(fetched(body, expected_sha256="0" * 64))
    assert row["status"] == schema.HASH_MISMATCH and "sha256" in row["error"]
    row = verify_and_hash(fetched(body, expected_md5=hashlib.md5(b"other").hexdigest()))
    assert row["status"] == schema.HASH_MISMATCH and "md5" in row["error"]
    row = verify_and_hash(
        fetched(body, expected_sha256=hashlib.sha256(body).hexdigest(), expected_md5=hashlib.md5(body).hexdigest())
    )
    assert row["status"] == schema.OK


def test_failed_rows_pass_through_untouched():
    row = schema.fail(schema.new_row("cc3m", "cc3m:1", "http://x"), schema.TIMEOUT, "slow")
    assert verify_and_hash(row) == row


def test_hash_hex_is_imagehash_string():
    for seed in range(6):
        image = Image.open(__import__("io").BytesIO(jpeg(seed, (300 + 40 * seed, 200))))
        for h in (imagehash.phash(image), imagehash.dhash(image)):
            assert hash_hex(h) == str(h)
