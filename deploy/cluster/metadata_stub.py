"""A loopback stand-in for the GCE metadata server: credentials for processes that share nothing.

Beam's GCS client ignores --no_auth and asks google.auth.default() for credentials, retrying for
~25 s when there are none; each launcher, job service and worker is a separate process, so an
in-process patch (deploy/offline.anonymous_credentials) cannot reach them. With GCE_METADATA_HOST
and GCE_METADATA_IP pointing here, google-auth finds "Compute Engine" credentials at once and gets a
dummy token, which the GCS emulator ignores.
"""

import http.server
import json
import threading

from deploy.offline import LOOPBACK, OFFLINE_PROJECT

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ACCOUNT = "offline-worker@offline-project.iam.gserviceaccount.com"


def _answer(path: str, project: str):
    """(status, content type, body) for a metadata path (query string removed)."""
    path = path.rstrip("/")
    if path in ("", "/computeMetadata/v1"):
        return 200, "text/plain", "computeMetadata/"
    if path == "/computeMetadata/v1/project/project-id":
        return 200, "text/plain", project
    if path == "/computeMetadata/v1/project/numeric-project-id":
        return 200, "text/plain", "0"
    # google-auth asks for "default" first, then by the account's email once it knows it.
    account, _, leaf = path.partition("/service-accounts/")[2].partition("/")
    if "/service-accounts/" in path and account in ("default", ACCOUNT):
        if leaf == "":
            return 200, "application/json", json.dumps({"email": ACCOUNT, "scopes": SCOPES, "aliases": ["default"]})
        if leaf == "email":
            return 200, "text/plain", ACCOUNT
        if leaf == "scopes":
            return 200, "text/plain", "\n".join(SCOPES)
        if leaf == "token":
            return (
                200,
                "application/json",
                json.dumps({"access_token": "offline-token", "expires_in": 3600, "token_type": "Bearer"}),
            )
    return 404, "text/plain", "not found"


class MetadataStub:
    """The metadata server on 127.0.0.1:<free port>; `env` points google-auth at it."""

    def __init__(self, project: str = OFFLINE_PROJECT):
        project_id = project

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802  (http.server's name)
                status, kind, body = _answer(self.path.partition("?")[0], project_id)
                data = body.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict:
        """Environment variables that make google-auth use this server (and skip no GCE check)."""
        host = f"{LOOPBACK}:{self.port}"
        return {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, "NO_GCE_CHECK": "false"}

    def start(self) -> "MetadataStub":
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
