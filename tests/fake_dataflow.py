"""A fake Dataflow API on loopback: records what DataflowRunner sends and answers just enough.

    with FakeDataflow() as api:
        run(["--runner=DataflowRunner", f"--dataflow_endpoint={api.endpoint}", ...])
        (request,) = api.requests_to("/jobs")

The endpoint is spelled http://localhost:PORT on purpose: Beam's Dataflow client talks REST
(JSON over HTTP/1.1, recordable here) only when the endpoint contains "localhost", and gRPC to
any other address. The server listens on 127.0.0.1 only.
"""

import dataclasses
import http.server
import json
import re
import threading

JOB_ID = "2026-01-01_00_00_00-1234567890"


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: dict


class FakeDataflow:
    """Jobs are created, and stay, RUNNING: submit with --no_wait_until_finish, as the Flex
    Template launcher does (waiting would poll for ever)."""

    STATE = "JOB_STATE_RUNNING"

    def __init__(self):
        self.requests = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.endpoint = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def requests_to(self, path_suffix, method="POST"):
        return [r for r in self.requests if r.method == method and r.path.split("?")[0].endswith(path_suffix)]

    def _answer(self, method, path, body):
        route = path.split("?")[0]
        if method == "POST" and route.endswith("/jobs"):
            return 200, dict(body, id=JOB_ID, currentState=self.STATE)
        if method == "GET" and re.search(r"/jobs/[^/]+$", route):
            return 200, {"id": JOB_ID, "currentState": self.STATE}
        if method == "GET" and route.endswith(("/messages", "/metrics")):
            return 200, {}
        return 404, {"error": {"code": 404, "message": f"fake Dataflow has no {method} {route}"}}

    def _handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                with fake._lock:
                    fake.requests.append(Request(self.command, self.path, dict(self.headers), body))
                status, answer = fake._answer(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args):
                pass

        return Handler
