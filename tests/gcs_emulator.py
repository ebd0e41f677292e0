"""pytest fixture `gcs_emulator`: a GCS on loopback for gs:// paths in tests.

    from tests.gcs_emulator import gcs_emulator  # noqa: F401  (makes the fixture available)

    def test_writes_to_gcs(gcs_emulator):
        gcs_emulator.bucket("my-bucket")                 # create (or get) a bucket
        run_pipeline(["--output", "gs://my-bucket/out", "--runner=FnApiRunner"])
        names = [b.name for b in gcs_emulator.client().list_blobs("my-bucket")]

One emulator per test session (in memory, 127.0.0.1:<free port>); each test names its own
buckets. While it is in use, STORAGE_EMULATOR_HOST is set, so Beam's gcsio and
google-cloud-storage clients made in this process (and in subprocesses started with
`env=os.environ` or `gcs_emulator.env`) go there, and google.auth.default() answers anonymous
credentials at once instead of retrying for ~25 s. Subprocesses do not get that patch: run
Beam in-process (FnApiRunner) when a pipeline touches gs://.
"""

import pytest

from deploy.offline import GcsEmulator, anonymous_credentials


@pytest.fixture(scope="session")
def gcs_emulator():
    patch = pytest.MonkeyPatch()
    with GcsEmulator() as emulator, anonymous_credentials(emulator.project):
        for name, value in emulator.env.items():
            patch.setenv(name, value)
        try:
            yield emulator
        finally:
            patch.undo()
