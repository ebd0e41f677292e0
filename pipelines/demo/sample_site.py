"""The bundled demo sample and the loopback web server that serves it.

Pictures are generated deterministically (seeded), so the sample ships as a few small manifest
templates (pipelines/demo/sample/*.tmpl, `{base}` standing for http://127.0.0.1:PORT) plus this code.
`SampleWebServer` is a real threaded HTTP server with scripted answers (errors, slow bodies,
redirect loops, encodings, opt-outs) and is reused by the tests.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import random
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

__all__ = [
    "SAMPLE_DIR",
    "Reply",
    "SampleWebServer",
    "picture",
    "encode",
    "jpeg",
    "placeholder_png",
    "pixel_bomb_png",
    "gzip_bomb",
    "demo_routes",
    "md5_base64",
    "render_templates",
    "IMAGENET_SAMPLE",
    "write_imagenet_root",
]

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")


@dataclasses.dataclass
class Reply:
    """One scripted answer: status, body, headers, and how (slowly, cut short) it is sent."""

    status: int = 200
    body: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    delay: float = 0.0  # before the status line
    drip: float = 0.0  # seconds between 1 KiB chunks of the body
    cut_after: int | None = None  # send this many body bytes, then close (declared length kept)
    reset: bool = False  # no answer: the connection is reset (TCP RST) before any status line


class SampleWebServer:
    """Threaded HTTP/1.1 server on 127.0.0.1. routes: path -> Reply or list of Reply (served in turn,
    the last one repeating). Counts hits per path for tests of retries and resume."""

    def __init__(
        self,
        routes: dict[str, Reply | list[Reply] | Callable[..., Reply]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.routes = dict(routes or {})
        self.hits: dict[str, int] = {}
        self.requests: list[tuple] = []  # (method, path, headers, monotonic start time)
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0  # TCP connections accepted: fewer than requests when clients keep them alive
        self._lock = threading.Lock()
        handler = _make_handler(self)
        self._server = _Server((host, port), handler)
        self.port = self._server.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return self.base + path

    def _next_reply(self, path, method, headers):
        with self._lock:
            count = self.hits.get(path, 0)
            self.hits[path] = count + 1
            self.requests.append((method, path, dict(headers), time.monotonic()))
            reply = self.routes.get(path)
        if reply is None:
            return Reply(404, b"not found", {"Content-Type": "text/plain"})
        if callable(reply):
            return reply(method, headers, count)
        if isinstance(reply, list):
            return reply[min(count, len(reply) - 1)]
        return reply

    def start(self) -> SampleWebServer:
        """Serves in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass  # clients hanging up mid-answer is what the hostile routes are for


def _make_handler(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            with server._lock:
                server.connections += 1
            super().setup()

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer(head=False)

        def _answer(self, head):
            with server._lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._reply(head)
            finally:
                with server._lock:
                    server.in_flight -= 1

        def _reply(self, head):
            path = self.path.split("?", 1)[0]
            reply = server._next_reply(path, self.command, self.headers)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.reset:
                # SO_LINGER 0: close() sends a RST instead of a FIN, as a crashed or overloaded server does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            try:
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body))}
                headers.update(reply.headers)
                for name, value in headers.items():
                    for item in value if isinstance(value, list) else [value]:
                        self.send_header(name, item)
                self.end_headers()
                if head:
                    return
                body = reply.body if reply.cut_after is None else reply.body[: reply.cut_after]
                if reply.drip:
                    for i in range(0, len(body), 1024):
                        self.wfile.write(body[i : i + 1024])
                        self.wfile.flush()
                        time.sleep(reply.drip)
                else:
                    self.wfile.write(body)
                if reply.cut_after is not None:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


# --- generated pictures ---------------------------------------------------------------------


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic photo-like picture: gradient sky, shapes, noise."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    for _ in range(rng.randrange(4, 9)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(20, width // 2), y0 + rng.randrange(20, height // 2)
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=color)
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **params: Any) -> bytes:
    """`image` encoded as `fmt` with Pillow's save parameters."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (320, 240), quality: int = 90) -> bytes:
    """The JPEG bytes of `picture(seed, size)`."""
    return encode(picture(seed, size), "JPEG", quality=quality)


def placeholder_png() -> bytes:
    """Like Flickr's 'This photo is no longer available': one picture for many dead URLs."""
    image = Image.new("RGB", (500, 374), (238, 238, 238))
    draw = ImageDraw.Draw(image)
    draw.rectangle([150, 110, 350, 260], outline=(180, 180, 180), width=6)
    draw.line([(150, 110), (350, 260)], fill=(180, 180, 180), width=6)
    return encode(image, "PNG")


def pixel_bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header announcing width x height pixels, with almost no data behind it."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gzip_bomb(size: int) -> bytes:
    """A gzip body that inflates to `size` bytes."""
    return gzip.compress(b"\0" * size, compresslevel=9)


# --- the demo sample --------------------------------------------------------------------------


def demo_routes(timeout: float) -> dict[str, Any]:
    """Every path the demo manifests name, with the answer a real web would give."""
    routes: dict[str, Any] = {}
    for seed in range(24):
        routes[f"/img/p{seed:02d}.jpg"] = Reply(
            200, jpeg(seed), {"Content-Type": "image/jpeg", "ETag": f'"p{seed:02d}"'}
        )
    # The same photo again: identical bytes elsewhere, resized, re-encoded as PNG.
    routes["/mirror/p01.jpg"] = routes["/img/p01.jpg"]
    routes["/mirror/p02.jpg"] = routes["/img/p02.jpg"]
    routes["/img/p03-small.jpg"] = Reply(
        200, encode(picture(3).resize((160, 120)), "JPEG", quality=75), {"Content-Type": "image/jpeg"}
    )
    routes["/img/p05-small.jpg"] = Reply(
        200, encode(picture(5).resize((240, 180)), "JPEG", quality=70), {"Content-Type": "image/jpeg"}
    )
    routes["/img/p08.png"] = Reply(200, encode(picture(8), "PNG"), {"Content-Type": "image/png"})
    # Failures, one of each kind.
    # The other datasets' sample files name these (pipelines/demo/sample/README-formats.md).
    for n in range(3):
        routes[f"/cc3m/{n}.jpg"] = Reply(200, jpeg(30 + n), {"Content-Type": "image/jpeg"})
        routes[f"/zero/{n}.jpg"] = Reply(200, jpeg(40 + n), {"Content-Type": "image/jpeg"})
    routes["/cc12m/0.jpg"] = Reply(200, jpeg(33), {"Content-Type": "image/jpeg"})
    routes["/photo_unavailable.png"] = Reply(200, placeholder_png(), {"Content-Type": "image/png"})
    for n in range(3):
        routes[f"/flickr/gone{n}.jpg"] = Reply(302, b"", {"Location": "/photo_unavailable.png"})
    routes["/redirect/p12"] = Reply(301, b"", {"Location": "/img/p12.jpg"})
    routes["/loop"] = Reply(302, b"", {"Location": "/loop"})
    routes["/flaky/p10.jpg"] = [Reply(503, b"busy", {"Retry-After": "0"}), routes["/img/p10.jpg"]]
    routes["/error/500.jpg"] = Reply(500, b"oops", {"Content-Type": "text/plain"})
    routes["/gone/410.jpg"] = Reply(410, b"gone", {"Content-Type": "text/plain"})
    routes["/slow.jpg"] = Reply(200, jpeg(20), {"Content-Type": "image/jpeg"}, delay=timeout + 1)
    routes["/page.html"] = Reply(200, b"<html><body>Sorry</body></html>", {"Content-Type": "text/html"})
    routes["/noai/p11.jpg"] = Reply(200, jpeg(11), {"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"})
    routes["/truncated.jpg"] = Reply(200, jpeg(21, (640, 480))[:4000], {"Content-Type": "image/jpeg"})
    routes["/bomb.png"] = Reply(200, pixel_bomb_png(), {"Content-Type": "image/png"})
    routes["/gzip/p13.jpg"] = Reply(
        200, gzip.compress(jpeg(13)), {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )
    routes["/gzip-bomb.jpg"] = Reply(
        200, gzip_bomb(40 * 1024 * 1024), {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )
    return routes


def md5_base64(body: bytes) -> str:
    """The base64 MD5 of `body`, as Open Images' OriginalMD5 writes it."""
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def render_templates(server: SampleWebServer, out_dir: str) -> dict[str, str]:
    """Writes the demo manifests with the server's address and the real digests filled in."""
    os.makedirs(out_dir, exist_ok=True)
    digests = {}
    for path, reply in server.routes.items():
        if isinstance(reply, Reply) and reply.status == 200:
            digests[path] = reply.body
    values = {"base": server.base, "port": server.port}
    for path, body in digests.items():
        name = path.strip("/").replace("/", "_").replace(".", "_").replace("-", "_")
        values[f"md5_{name}"] = md5_base64(body)
        values[f"sha256_{name}"] = hashlib.sha256(body).hexdigest()
        values[f"sha256b64_{name}"] = base64.b64encode(hashlib.sha256(body).digest()).decode()
    written = {}
    for name in sorted(os.listdir(SAMPLE_DIR)):
        if name.endswith(".md"):
            continue
        with open(os.path.join(SAMPLE_DIR, name), encoding="utf-8") as handle:
            text = handle.read()
        if name.endswith(".tmpl"):  # our manifests: str.format fields for address and digests
            name, text = name[: -len(".tmpl")], text.format(**values)
        else:  # the side files in real formats: only the port placeholder (they hold braces)
            text = text.replace("{port}", str(server.port))
        target = os.path.join(out_dir, name)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
        written[name] = target
    return written


IMAGENET_SAMPLE = {
    "n01440764": "n01440764_10026.JPEG",
    "n01443537": "n01443537_1000.JPEG",
    "n02085620": "n02085620_10074.JPEG",
}


def write_imagenet_root(out_dir: str) -> str:
    """An ILSVRC-style <root>/<wnid>/<file> tree for the ImageNet-Captions sample."""
    root = os.path.join(out_dir, "imagenet", "train")
    for n, (wnid, filename) in enumerate(sorted(IMAGENET_SAMPLE.items())):
        os.makedirs(os.path.join(root, wnid), exist_ok=True)
        with open(os.path.join(root, wnid, filename), "wb") as handle:
            handle.write(jpeg(50 + n, (500, 375)))
    return root
