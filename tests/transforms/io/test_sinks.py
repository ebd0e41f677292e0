import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.io.sinks import CountBlobs, delete_tree, join_path, publish_file


def test_count_blobs_counts_each_distinct_blob_once_across_shards_and_batches():
    # 3000 distinct blobs, each pointed at by 1-3 rows, plus rows without a blob: the digests
    # spread over every shard and several batches, and duplicates meet in different batches.
    rows = [{"blob": f"out/blobs/{i:05d}.jpg"} for i in range(3000) for _ in range(1 + i % 3)]
    rows += [{"blob": None}, {}] * 50
    with TestPipeline() as p:
        count = p | beam.Create(rows, reshuffle=True) | CountBlobs()
        assert_that(count, equal_to([3000]))


@pytest.mark.parametrize(
    ("base", "parts", "joined"),
    [
        ("/out", ("blobs", "ab", "cd.jpg"), "/out/blobs/ab/cd.jpg"),
        ("/out/", ("summary.json",), "/out/summary.json"),
        ("out", ("images",), "out/images"),
        ("/", ("x",), "/x"),
        ("gs://bucket/out/", ("blobs", "ab"), "gs://bucket/out/blobs/ab"),
    ],
)
def test_join_path_joins_local_and_gs_paths_alike(base, parts, joined):
    # Local paths take os.path.join (Beam's scheme lookup cost ~0.1 ms a blob); gs:// stays Beam's.
    assert join_path(base, *parts) == joined
    if "://" in base:
        assert joined == FileSystems.join(base.rstrip("/"), *parts)


def test_count_blobs_of_nothing_is_zero():
    with TestPipeline() as p:
        assert_that(p | beam.Create([{"blob": None}]) | CountBlobs(), equal_to([0]))


def test_publish_file_renames_once_and_a_retry_finds_it_in_place(tmp_path):
    aside, final = tmp_path / "_tmp-run" / "summary.json", tmp_path / "summary.json"
    aside.parent.mkdir()
    aside.write_text("new")
    final.write_text("earlier")
    assert publish_file(str(aside), str(final)) == str(final)
    assert final.read_text() == "new" and not aside.exists()
    assert publish_file(str(aside), str(final)) == str(final)  # a retried step
    final.unlink()
    with pytest.raises(OSError, match="vanished before it reached"):
        publish_file(str(aside), str(final))


@pytest.mark.parametrize("where", ["local", "gs"])
def test_delete_tree_deletes_every_level_under_the_folder_and_nothing_beside_it(tmp_path, where, request):
    # Before, on gs:// only the folder's direct objects went ("*" stops at "/" there): a failed
    # run's nested temporaries (blobs/, history night files) stayed for good.
    names = ["d/a.txt", "d/sub/b.txt", "d/sub/deeper/c.txt", "keep/x", "d-sibling/y"]
    if where == "gs":
        emulator = request.getfixturevalue("gcs_emulator")
        bucket = emulator.bucket("delete-tree")
        for name in names:
            bucket.blob(name).upload_from_string(b"1")
        delete_tree("gs://delete-tree/d")
        left = sorted(blob.name for blob in emulator.client().list_blobs("delete-tree"))
    else:
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"1")
        delete_tree(str(tmp_path / "d"))
        left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["d-sibling/y", "keep/x"]
