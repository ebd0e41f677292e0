"""A remote runner's workers cannot open the launching machine's files: the jobs refuse such
paths at submission, in one line with exit 2, before anything is read or submitted."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import dedup, ingest, refresh
from pipelines.launch import flex_template, job_runner
from transforms.errors import BadInput

REMOTE = [
    "--runner=PortableRunner",
    "--job_endpoint=localhost:9",
    "--environment_type=EXTERNAL",
    "--environment_config=localhost:9",
]
GS_INGEST = {
    "output": "gs://b/out",
    "manifest": "cc3m=gs://b/cc3m.tsv",
    "cc12m-hashes": "gs://b/h.tsv",
    "openimages-labels": "gs://b/l.csv",
    "openimages-classes": "gs://b/c.csv",
    "cc3m-labels": "gs://b/cl.tsv",
    "long-captions": "gs://b/lc.csv",
    "imagenet-root": "gs://b/train",
    "imagenet-synsets": "gs://b/syn.txt",
}


def ingest_argv(**overrides):
    values = dict(GS_INGEST, **overrides)
    return [f"--{name}={value}" for name, value in values.items()]


def ingest_options(argv):
    options = PipelineOptions(argv)
    return options, options.view_as(ingest.IngestOptions)


@pytest.mark.parametrize("flag", sorted(GS_INGEST))
def test_ingest_refuses_each_local_path_with_a_remote_runner(flag):
    local = "/data/x" if flag != "manifest" else "cc3m=/data/cc3m.tsv"
    options, opts = ingest_options(ingest_argv(**{flag: local}) + REMOTE)
    with pytest.raises(BadInput, match=f"^--{flag} must be gs:// for a remote runner \\(PortableRunner\\), got /data/"):
        ingest.check_remote_inputs(options, opts)


def test_ingest_accepts_gs_paths_remote_and_local_paths_locally():
    ingest.check_remote_inputs(*ingest_options(ingest_argv() + REMOTE))
    local = ingest_argv(**{"imagenet-root": "/data/train", "output": "out"}) + ["--runner=FnApiRunner"]
    ingest.check_remote_inputs(*ingest_options(local))


def test_ingest_refuses_demo_with_a_remote_runner():
    with pytest.raises(BadInput, match="--demo serves the sample from this machine"):
        ingest.check_remote_inputs(*ingest_options(["--demo", "--output=gs://b/out"] + REMOTE))


def test_flex_launcher_refuses_a_local_side_file_in_one_line(capsys, tmp_path):
    """The Flex Template entry, with template parameter names, as Dataflow's launcher calls it."""
    argv = [
        "--output=gs://b/out",
        "--manifest=imagenet_captions=gs://b/ic.json",
        f"--imagenet_root={tmp_path}/train",
    ] + REMOTE
    assert flex_template.main(argv, job="ingest") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ingest: --imagenet-root must be gs:// for a remote runner (PortableRunner), got "
        f"{tmp_path}/train: its workers cannot read this machine's files"
    ]
    assert not list(tmp_path.iterdir())


def test_refresh_refuses_local_snapshot_and_history(capsys):
    argv = ["--snapshot=gs://b/snap", "--output=gs://b/night", "--history=/var/history"] + REMOTE
    assert refresh.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "refresh: --history must be gs:// for a remote runner (PortableRunner), got /var/history: "
        "its workers cannot read this machine's files"
    )
    assert refresh.main(["--snapshot=snap", "--output=gs://b/night"] + REMOTE) == 2
    assert "--snapshot must be gs://" in capsys.readouterr().err


def test_dedup_refuses_a_local_input():
    with pytest.raises(BadInput, match="^--input must be gs:// for a remote runner"):
        dedup.run(["--input=gs://b/a", "--input=out-b", "--output=gs://b/c"] + REMOTE)


@pytest.mark.parametrize(
    "path,shared",
    [
        ("gs://b/x", True),
        ("s3://b/x", True),
        ("/data/x", False),
        ("relative/x", False),
        ("file:///data/x", False),
        ("C:\\x", False),
    ],
)
def test_is_shared_path(path, shared):
    assert job_runner.is_shared_path(path) is shared


def test_a_bucket_that_does_not_exist_is_bad_input_in_one_line(gcs_emulator, tmp_path, capsys):
    """A typo in a bucket's name is the user's mistake: exit 2, one line naming the bucket. Before:
    exit 1, as if the storage had failed ('storage unreachable: cannot list ...', or for the
    ingest's --output 'unexpected BeamIOError: Match operation failed ...')."""
    from tests.table_readers import one_line

    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text("photo\thttp://127.0.0.1:9/a.jpg\n")
    argv = [f"--manifest=cc3m={manifest}", "--output=gs://no-such-bucket-x/out", "--no-progress"]
    assert ingest.main(argv) == 2
    assert "no bucket no-such-bucket-x" in one_line(capsys, "ingest")
    gcs_emulator.bucket("bucket-there")
    assert dedup.main(["--input=gs://no-such-bucket-x/out", "--output=gs://bucket-there/out3"]) == 2
    assert "--input gs://no-such-bucket-x/out: no bucket no-such-bucket-x" in one_line(capsys, "dedup")
    assert refresh.main(["--snapshot=gs://no-such-bucket-x/out", "--output=gs://bucket-there/night"]) == 2
    assert "no bucket no-such-bucket-x" in one_line(capsys, "refresh")
