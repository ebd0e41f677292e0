"""Google Cloud stand-ins on loopback: a GCS emulator and anonymous credentials.

Used by `make dataflow-spec` (deploy/render_spec.py) and by the tests (tests/gcs_emulator.py),
so that gs:// paths and Dataflow job staging work with no cloud and no traffic outside
127.0.0.0/8.
"""

import contextlib
import os
import socket
import threading
from http import HTTPStatus
from unittest import mock

LOOPBACK = "127.0.0.1"
OFFLINE_PROJECT = "offline-project"

# google-auth reads these when first imported: set them before anything imports google.auth.
# NO_GCE_CHECK stops it probing the GCE metadata server (a link-local address, not loopback);
# the metadata host is also pointed at a closed loopback port in case something probes anyway.
OFFLINE_ENV = {
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": f"{LOOPBACK}:9",
    "GCE_METADATA_IP": f"{LOOPBACK}:9",
}


def free_port(host=LOOPBACK):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def anonymous_credentials(project=OFFLINE_PROJECT):
    """Make google.auth.default() answer anonymous credentials at once.

    Without credentials Beam retries google.auth.default() for ~25 s before every first gs://
    access, and the Dataflow client wants credentials to build its API client; the emulator and
    the fake Dataflow endpoint accept anonymous requests.
    """
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    def default(*unused_args, **unused_kwargs):
        return AnonymousCredentials(), project

    with mock.patch.object(google.auth, "default", default):
        yield


def _generation_preconditions(objects, lock):
    """(insert, delete) handlers of gcp-storage-emulator that honour `ifGenerationMatch`.

    The emulator ignores the precondition, so two writers racing for one object both succeed
    there, where real GCS answers the second 412: the gs:// output lease (transforms/io/lease.py)
    relies on that answer, and could not be tested without it. The check and the write happen
    under one lock, as GCS makes them one step.
    """
    from gcp_storage_emulator.exceptions import NotFound

    def generation(storage, bucket, name):
        try:
            return int(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return 0  # GCS: ifGenerationMatch=0 means "does not exist yet"

    def checked(handler, object_name):
        def handle(request, response, storage, *args, **kwargs):
            expected = request.query.get("ifGenerationMatch")
            if not expected:
                return handler(request, response, storage, *args, **kwargs)
            with lock:
                bucket = request.params["bucket_name"]
                if generation(storage, bucket, object_name(request)) != int(expected[0]):
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                    return None
                return handler(request, response, storage, *args, **kwargs)

        handle.original = handler
        return handle

    def upload_name(request):
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data
        return (data.get("meta") or {}).get("name") if "meta" in data else data.get("name")

    return (
        checked(getattr(objects.insert, "original", objects.insert), upload_name),
        checked(getattr(objects.delete, "original", objects.delete), lambda request: request.params["object_id"]),
    )


def _install_generation_preconditions():
    """Puts the precondition-checking handlers in the emulator's route table (once a process)."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if hasattr(objects.insert, "original"):
        return
    insert, delete = _generation_preconditions(objects, threading.Lock())
    for _regex, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is objects.insert:
                handlers[method] = insert
            elif handler is objects.delete:
                handlers[method] = delete
    objects.insert, objects.delete = insert, delete  # the server's fallback route names objects.insert


class GcsEmulator:
    """gcp-storage-emulator (GCS JSON API, in memory) serving on 127.0.0.1:<free port>.

    Point clients at it with `env` (STORAGE_EMULATOR_HOST, which Beam's gcsio and
    google-cloud-storage both honour); `client()` needs no environment.
    """

    def __init__(self, project=OFFLINE_PROJECT):
        self.project = project
        self.port = None
        self._server = None

    @property
    def endpoint(self):
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def env(self):
        """Environment variables that send gs:// traffic here (and nothing to the cloud)."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": self.project, **OFFLINE_ENV}

    def start(self):
        from gcp_storage_emulator.server import create_server

        _install_generation_preconditions()
        self.port = free_port()
        self._server = create_server(LOOPBACK, self.port, in_memory=True)
        self._server.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client(self):
        """A google-cloud-storage client of this emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )

    def bucket(self, name):
        """The bucket `name`, created if it does not exist yet.

        Created as deploy/bootstrap.sh creates the real one: without soft delete, which would
        bill every temp file of a job for a week (Beam warns about it).
        """
        client = self.client()
        bucket = client.lookup_bucket(name)
        if bucket is None:
            bucket = client.create_bucket(name)
            bucket.soft_delete_policy.retention_duration_seconds = 0
            bucket.patch()
        return bucket

    def wipe(self):
        """Delete every bucket and object."""
        self._server.wipe()


@contextlib.contextmanager
def offline_gcs(project=OFFLINE_PROJECT):
    """A running GcsEmulator with this process's environment and credentials pointed at it."""
    with GcsEmulator(project) as emulator, anonymous_credentials(project), mock.patch.dict(os.environ, emulator.env):
        yield emulator
