"""Peak memory of a local ingest run as the manifest grows (issue: bounded memory).

    python -m bench.memory --rows 10000 --rows 100000

Serves a distinct small JPEG per URL from a loopback server (generated on request from the path,
so nothing is stored), runs `python -m pipelines.ingest` on the default local runner (both cores),
and samples the resident memory of the whole process tree (driver + SDK workers) every 0.2 s.
"""

import argparse
import http.server
import io
import json
import os
import random
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

from PIL import Image

from bench.proctree import tree_rss


def small_jpeg(seed):
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (64, 48), bytes(rng.randrange(256) for _ in range(64 * 48 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            seed = int(self.path.rsplit("/", 1)[-1].split(".")[0])
        except ValueError:
            seed = -1
        if seed < 0 or seed % 50 == 49:  # a dead link now and then, as in real manifests
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = small_jpeg(seed)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def measure(rows, workdir, port):
    manifest = os.path.join(workdir, f"cc3m-{rows}.tsv")
    with open(manifest, "w") as handle:
        for n in range(rows):
            handle.write(f"random picture {n}\thttp://127.0.0.1:{port}/img/{n}.jpg\n")
    out = os.path.join(workdir, f"out-{rows}")
    command = [
        sys.executable,
        "-m",
        "pipelines.ingest",
        f"--manifest=cc3m={manifest}",
        f"--output={out}",
        "--allow-network=127.0.0.1/32",
        "--per-host=64",
        "--concurrency=64",
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"ingest failed:\n{output[-3000:]}")
    wall = time.monotonic() - started
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    return {
        "rows": rows,
        "rows_out": summary["rows"],
        "ok": summary["status_totals"].get("ok", 0),
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall, 1),
        "peak_rss_mb": round(peak / 2**20),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, action="append")
    args = parser.parse_args()
    server = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        for rows in args.rows or [10_000, 100_000]:
            results.append(measure(rows, workdir, server.server_address[1]))
            print(json.dumps(results[-1]), flush=True)
    server.shutdown()
    base = results[0]
    print(f"\n{'rows':>8} {'wall s':>8} {'rows/s':>8} {'peak RSS MB':>12} {'MB / 1K rows':>13}")
    for r in results:
        print(
            f"{r['rows']:>8} {r['wall_s']:>8} {r['rows_per_s']:>8} {r['peak_rss_mb']:>12} "
            f"{(r['peak_rss_mb'] - base['peak_rss_mb']) / max((r['rows'] - base['rows']) / 1000, 1e-9):>13.2f}"
        )


if __name__ == "__main__":
    main()
