"""kill -9 sweep: each job killed (SIGKILL to its process group) at many moments, the invariant
checked after each kill (docs/integrity.md: never a lost or doubled row, a killed run never
destroys the previous good output, the next run completes).

    PYTHONPATH=$PWD .venv/bin/python scripts/kill_sweep.py [--points N]
        [--only ingest1,ingest2,dedup,export,refresh] [--work DIR] [--images N] [--delay S]

The refresh's part (a rerun of a night, and the next night, over REFRESH_OUT and --history) is in
kill_sweep_refresh.py.

Prints one line per kill point and a table at the end; exit 1 if any point broke the invariant.
Not a test: minutes long. Serves generated JPEGs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg  # noqa: E402
from transforms.errors import BadInput  # noqa: E402
from transforms.io.table import list_table_files  # noqa: E402
from transforms.io.table_record import check_recorded_table  # noqa: E402

LOOPBACK = "127.0.0.1/32"
# two worker processes: the table comes in two parts, so a publish can be cut between them
WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
NET = [*WORKERS, "--allow-network", LOOPBACK, "--no-progress", "--no-report", "--retries", "0", "--timeout", "20"]


def serve(server: SampleWebServer, count: int, delay: float) -> list[str]:
    """`count` small JPEGs (every 10th a copy of the one before: exact duplicates), some 404s."""
    urls = []
    for n in range(count):
        seed = n - 1 if n % 10 == 9 else n
        server.routes[f"/i{n}.jpg"] = Reply(200, jpeg(seed, (64, 48)), {"Content-Type": "image/jpeg"}, delay=delay)
        urls.append(server.url(f"/i{n}.jpg"))
    for n in range(count // 20):
        urls.append(server.url(f"/missing{n}.jpg"))  # 404: http_error rows
    return urls


def write_manifest(path: str, urls: list[str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"photo {n}\t{url}\n" for n, url in enumerate(urls))
    return path


def start(job: str, args: list[str], pause: float = 0) -> subprocess.Popen:
    """`pause`: seconds after each publish step (kill_sweep_pause/sitecustomize.py), 0 for none."""
    env = dict(os.environ, PYTHONPATH=REPO)
    if pause:
        env.update(
            PYTHONPATH=f"{REPO}:{os.path.join(REPO, 'scripts', 'kill_sweep_pause')}", KILL_SWEEP_PAUSE=str(pause)
        )
    env.pop("BEAM_IMAGES_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{job}", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the hash and Beam workers die with it
    )


def run(job: str, args: list[str]) -> tuple[int, str]:
    process = start(job, args)
    _, err = process.communicate(timeout=600)
    return process.returncode, err.strip().splitlines()[-1] if err.strip() else ""


def kill_after(job: str, args: list[str], delay: float) -> bool:
    """Starts the job, SIGKILLs its process group after `delay` s; False if it had ended first."""
    process = start(job, args)
    try:
        process.wait(timeout=delay)
        process.communicate()
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        # a worker that left the group would outlive the kill (the brief: kill the whole group)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
            if not left:
                return True
            time.sleep(0.1)
        raise AssertionError(f"processes of the killed group still alive after 10 s: {left}") from None


def kill_when(job: str, args: list[str], ready, pause: float = 0) -> bool:
    """Starts the job, SIGKILLs its process group as soon as `ready()` (polled every 2 ms) is true;
    False if the job ended first. `pause`: see start()."""
    process = start(job, args, pause)
    deadline = time.monotonic() + 300
    while process.poll() is None and not ready():
        assert time.monotonic() < deadline
        time.sleep(0.002)
    if process.poll() is not None:
        process.communicate()
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    return True


def inodes(folder: str, pattern: str = "*") -> dict[str, int]:
    import glob  # noqa: PLC0415

    found = {}
    for path in glob.glob(os.path.join(folder, pattern)):
        try:
            found[os.path.relpath(path, folder)] = os.stat(path).st_ino
        except FileNotFoundError:
            pass
    return found


def table_events(out: str):
    """Kill moments of a table publish in OUT (ingest, dedup): name -> condition."""
    before = inodes(out, "images/*.parquet")
    summary = inodes(out, "summary.json")

    def new_parts(n):
        return lambda: len(set(inodes(out, "images/*.parquet")) - set(before)) >= n

    return {
        "first new part": new_parts(1),
        "second new part": new_parts(2),
        "summary replaced": lambda: inodes(out, "summary.json") not in (summary, {}),
        "an old part gone": lambda: bool(set(before) - set(inodes(out, "images/*.parquet"))),
    }


def table_rows(out: str) -> list[dict]:
    files = list_table_files(out)
    if not files:
        return []
    return pq.read_table(files, columns=["key", "status", "sha256", "blob", "is_canonical"]).to_pylist()


def fingerprint(rows: list[dict]) -> list[tuple]:
    return sorted((r["key"], r["status"], r["sha256"], r["is_canonical"]) for r in rows)


def blob_problems(rows: list[dict]) -> list[str]:
    bad = []
    for row in rows:
        if row["status"] != "ok":
            continue
        try:
            with open(row["blob"], "rb") as handle:
                if hashlib.sha256(handle.read()).hexdigest() != row["sha256"]:
                    bad.append(f"{row['key']}: blob differs")
        except OSError:
            bad.append(f"{row['key']}: blob missing")
    return bad


def table_state(out: str, ref: list[tuple] | None = None, alt: list[tuple] | None = None) -> str:
    """What a reader of OUT finds: 'none' (no table), 'ref'/'alt' (that table whole and recorded),
    'refused: ...' (check_recorded_table refuses it), or 'MIXED/PARTIAL ...' (read as a table)."""
    files = list_table_files(out)
    if not files:
        return "none"
    try:
        kept = check_recorded_table("--input", out, files)
    except BadInput as error:
        return "refused: " + str(error).split(": images/ is not", 1)[-1][:80]
    has_summary = os.path.exists(os.path.join(out, "summary.json"))
    rows = pq.read_table(kept, columns=["key", "status", "sha256", "blob", "is_canonical"]).to_pylist()
    keys = [r["key"] for r in rows]
    found = fingerprint(rows)
    label = "ref" if found == ref else "alt" if found == alt else None
    if label and len(set(keys)) == len(keys) and has_summary:
        return label
    return f"MIXED/PARTIAL rows={len(rows)} distinct={len(set(keys))} summary={has_summary}"


def check_final(out: str, code: int, line: str, ref: list[tuple]) -> str:
    if code != 0:
        return f"FAIL exit {code}: {line[:120]}"
    rows = table_rows(out)
    if fingerprint(rows) != ref:
        return f"FAIL rows differ: {len(rows)} vs {len(ref)}"
    bad = blob_problems(rows)
    if bad:
        return f"FAIL blobs: {bad[:3]}"
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        books = json.load(handle)["books"]
    if not books["balanced"]:
        return "FAIL books unbalanced"
    leftovers = [n for n in os.listdir(out) if n.startswith("_tmp-") or n.startswith("_LEASE")]
    return "ok" + (f" (leftovers {leftovers})" if leftovers else "")


def reader_export(out: str, work: str) -> str:
    exp = tempfile.mkdtemp(dir=work, prefix="exp-")
    code, line = run("export", ["--input", out, "--output", exp, "--format", "webdataset", "--runner=FnApiRunner"])
    shutil.rmtree(exp, ignore_errors=True)
    return f"export {code}" + ("" if code == 0 else f" ({line[:60]})")


def delays(total: float, points: int) -> list[float]:
    return [round(total * (i + 0.5) / points, 2) for i in range(points)]


EVENTS = ("first new part", "second new part", "summary replaced", "an old part gone")


def kill_points(total: float, points: int) -> list:
    """Delays spread over `total`, then the table publish's moments (names of table_events)."""
    return [*delays(total, points), *EVENTS]


def kill(job: str, args: list[str], out: str, point) -> bool:
    if isinstance(point, str):
        return kill_when(job, args, table_events(out)[point])
    return kill_after(job, args, point)


def sweep_ingest(ctx, points, second=False):
    """A first ingest into an empty OUT, or (second) a run of manifest B over A's good table."""
    results = []
    manifest, seconds, reference = (
        (ctx.manifest_b, ctx.t_ingest_b, ctx.ref_b)
        if second
        else (
            ctx.manifest_a,
            ctx.t_ingest,
            ctx.ref_a,
        )
    )
    args = lambda out: ["--manifest", f"cc3m={manifest}", "--output", out, *NET]  # noqa: E731
    for i, delay in enumerate(kill_points(seconds * 1.05, points)):
        out = os.path.join(ctx.work, f"i{2 if second else 1}-{i}")
        if second:
            shutil.copytree(ctx.out_a, out, symlinks=True)
        killed = kill("ingest", args(out), out, delay)
        state = table_state(out, ctx.ref_a, ctx.ref_b) if second else table_state(out, ctx.ref_a)
        reader = reader_export(out, ctx.work) if second or state != "none" else "-"
        resume = "-"
        if second or list_table_files(out):
            copy = out + "-resume"
            shutil.copytree(out, copy, symlinks=True)
            resume = check_final(copy, *run("ingest", args(copy) + ["--resume"]), reference)
        rerun = check_final(out, *run("ingest", args(out)), reference)
        results.append((f"ingest {'second' if second else 'first'}", delay, killed, state, reader, rerun, resume))
        print(results[-1], flush=True)
    return results


def sweep_dedup(ctx, points):
    results = []
    second = ["--input", ctx.out_a, "--input", ctx.out_c, "--output"]
    for i, delay in enumerate(kill_points(ctx.t_dedup * 1.05, points)):
        out3 = os.path.join(ctx.work, f"d-{i}")
        shutil.copytree(ctx.out3_first, out3, symlinks=True)
        killed = kill("dedup", [*second, out3], out3, delay)
        state = table_state(out3, ctx.ref_d1, ctx.ref_d2)
        reader = reader_export(out3, ctx.work)
        code, line = run("dedup", [*second, out3])
        rows = table_rows(out3)
        same = fingerprint(rows) == ctx.ref_d2
        rerun = f"FAIL exit {code}: {line[:100]}" if code else ("ok" if same else "FAIL rows")
        results.append(("dedup second", delay, killed, state, reader, rerun, "-"))
        print(results[-1], flush=True)
    return results


def export_state(exp: str, before: dict, after: dict) -> str:
    """'old'/'new': EXP's files are byte for byte one export's; else a description."""
    names = [name for name in os.listdir(exp) if not name.startswith(("_", ".")) and name != "summary.json"]
    found = {name: _digest(os.path.join(exp, name)) for name in names}
    summary = os.path.join(exp, "summary.json")
    source = None
    if os.path.exists(summary):
        with open(summary, encoding="utf-8") as handle:
            source = os.path.basename(json.load(handle)["input"].rstrip("/"))
    if found == before and source == "ref-a":
        return "old"
    if found == after and source == "ref-b":
        return "new"
    changed = sorted(n for n in found if found[n] != before.get(n))
    return f"MIXED summary of {source}; changed {changed[:3]} of {len(found)}"


def _digest(path: str) -> str:
    if os.path.isdir(path):
        return "dir"
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _renamed(folder: str, before: dict, names: list[str]) -> bool:
    now = inodes(folder)
    return any(now.get(name, before[name]) != before[name] for name in names)


def sweep_export(ctx, points):
    results = []
    args = ["--input", ctx.out_b, "--format", "webdataset", "--shard-size", "20", "--resize", "32", "--output"]
    for i, delay in enumerate([*delays(ctx.t_export * 1.05, points), "first shard renamed", "summary replaced"]):
        exp = os.path.join(ctx.work, f"e-{i}")
        shutil.copytree(ctx.exp_first, exp)
        if isinstance(delay, str):
            before = inodes(exp)
            changed = [n for n in before if n != "summary.json"] if delay.startswith("first") else ["summary.json"]
            killed = kill_when("export", [*args, exp], lambda e=exp, b=before, c=changed: _renamed(e, b, c))
        else:
            killed = kill_after("export", [*args, exp], delay)
        state = export_state(exp, ctx.exp_before, ctx.exp_after)
        code, line = run("export", [*args, exp])
        rerun = f"FAIL exit {code}: {line[:100]}" if code else export_state(exp, ctx.exp_before, ctx.exp_after)
        results.append(("export second", delay, killed, state, "-", rerun, "-"))
        print(results[-1], flush=True)
    return results


class Context:
    pass


def prepare_ingest(ctx, count):
    """The ingest references (A, and B: A plus new rows and the 404s), timed."""
    ctx.manifest_a = write_manifest(os.path.join(ctx.work, "a", "cc3m.tsv"), ctx.urls[: count - count // 10])
    ctx.manifest_b = write_manifest(os.path.join(ctx.work, "b", "cc3m.tsv"), ctx.urls)
    ctx.out_a, ctx.out_b = os.path.join(ctx.work, "ref-a"), os.path.join(ctx.work, "ref-b")
    ctx.out_c = os.path.join(ctx.work, "ref-c")
    started = time.monotonic()
    assert run("ingest", ["--manifest", f"cc3m={ctx.manifest_a}", "--output", ctx.out_a, *NET])[0] == 0
    ctx.t_ingest = time.monotonic() - started
    started = time.monotonic()
    assert run("ingest", ["--manifest", f"cc3m={ctx.manifest_b}", "--output", ctx.out_b, *NET])[0] == 0
    ctx.t_ingest_b = time.monotonic() - started
    ctx.ref_a, ctx.ref_b = fingerprint(table_rows(ctx.out_a)), fingerprint(table_rows(ctx.out_b))


def prepare(ctx):
    """The other references: uninterrupted runs, timed."""
    # B over a copy of A: the second-run reference (a table replaced)
    shutil.copytree(ctx.out_a, ctx.out_c, symlinks=True)
    assert run("ingest", ["--manifest", f"cc3m={ctx.manifest_b}", "--output", ctx.out_c, *NET])[0] == 0
    assert fingerprint(table_rows(ctx.out_c)) == ctx.ref_b, "a second run's table differs from a first run's"
    ctx.out3_first = os.path.join(ctx.work, "ref-d1")
    assert run("dedup", ["--input", ctx.out_a, "--output", ctx.out3_first])[0] == 0
    ctx.ref_d1 = fingerprint(table_rows(ctx.out3_first))
    out3 = os.path.join(ctx.work, "ref-d2")
    shutil.copytree(ctx.out3_first, out3)
    started = time.monotonic()
    assert run("dedup", ["--input", ctx.out_a, "--input", ctx.out_c, "--output", out3])[0] == 0
    ctx.t_dedup = time.monotonic() - started
    ctx.ref_d2 = fingerprint(table_rows(out3))
    ctx.exp_first = os.path.join(ctx.work, "ref-e1")
    args = ["--format", "webdataset", "--shard-size", "20", "--resize", "32", "--output"]
    assert run("export", ["--input", ctx.out_a, *args, ctx.exp_first])[0] == 0
    exp = os.path.join(ctx.work, "ref-e2")
    shutil.copytree(ctx.exp_first, exp)
    started = time.monotonic()
    assert run("export", ["--input", ctx.out_b, *args, exp])[0] == 0
    ctx.t_export = time.monotonic() - started
    ctx.exp_before = {n: _digest(os.path.join(ctx.exp_first, n)) for n in os.listdir(ctx.exp_first)}
    ctx.exp_after = {n: _digest(os.path.join(exp, n)) for n in os.listdir(exp)}
    # summary.json holds timings: compare it by presence only
    ctx.exp_before.pop("summary.json")
    ctx.exp_after.pop("summary.json")
    print(
        f"references: ingest {ctx.t_ingest:.1f}s / {ctx.t_ingest_b:.1f}s, dedup {ctx.t_dedup:.1f}s,"
        f" export {ctx.t_export:.1f}s; rows a={len(ctx.ref_a)} b={len(ctx.ref_b)} d2={len(ctx.ref_d2)}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--only", default="ingest1,ingest2,dedup,export,refresh")
    parser.add_argument("--work", default=None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the server waits before each image")
    options = parser.parse_args()
    ctx = Context()
    ctx.work = options.work or tempfile.mkdtemp(prefix="kill-sweep-")
    os.makedirs(ctx.work, exist_ok=True)
    results = []
    with SampleWebServer() as server:
        ctx.urls = serve(server, options.images, options.delay)
        prepare_ingest(ctx, options.images)
        if set(options.only.split(",")) - {"refresh"}:
            prepare(ctx)
        sweeps = {
            "ingest1": sweep_ingest,
            "ingest2": lambda ctx, points: sweep_ingest(ctx, points, second=True),
            "dedup": sweep_dedup,
        }
        from kill_sweep_refresh import sweep_refresh  # noqa: PLC0415 (it imports this module's helpers)

        sweeps.update(export=sweep_export, refresh=sweep_refresh)
        for name in options.only.split(","):
            results += sweeps[name](ctx, options.points)
    print("\njob | kill at s | killed | state after kill | reader | rerun | --resume")
    bad = 0
    for row in results:
        print(" | ".join(map(str, row)))
        bad += (
            any(str(cell).startswith(("FAIL", "MIXED")) for cell in row)
            or row[4].startswith("export 0")
            and ("PARTIAL" in row[3] or row[3].startswith("refused"))
        )
    print(f"\n{len(results)} kill points, {bad} broke the invariant; work dir {ctx.work}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
