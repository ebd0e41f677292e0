"""Side-by-side benchmark: img2dataset 1.47 against our ingest, same corpus, same machine.

One go (`make bench`): build or reuse the corpus (bench/make_corpus.py), serve it with nginx on
127.0.0.1, measure what the server alone can deliver, run img2dataset (its best config from the
sweep) and our ingest on the local runner, each from a cold output directory, then the CPU
floor (bench/cpu_floor.py). Prints one table and writes bench/work/results.json.

Figures of each run:
  wall s        from process start to exit, start-up included
  images/s      images the tool reports as fetched and stored (status success / ok), over wall
  verified      of those, rows whose sha256 and width/height match the corpus truth
  peak RSS      the highest sum of RSS over the tool's whole process tree (psutil, every 0.2 s);
                shared pages count once per process, so this over-counts forked workers
  peak PSS      the same with PSS (shared pages split between sharers): closer to real use
  CPU s         user+sys CPU of the whole tree (getrusage of reaped children)
  CPU by process  the same split by process role (`python -m M`: M; else the script's or
                executable's name), each process's CPU as last sampled; with the CPU timeline
                (tree CPU every 0.2 s) in the JSON: where the cores were idle, start-up or tail
  other CPU %   CPU used meanwhile by processes that are neither the run, nginx nor this
                harness, as % of the machine: above ~10 % the machine was busy, rerun

By default the whole benchmark runs inside a fresh network namespace (`unshare -n`, root) that
has only a loopback interface: nothing can leave 127.0.0.0/8, and the port never clashes with
another server of the machine.

    .venv/bin/python bench/run_bench.py [--count 3000] [--repeat 1] [--sweep] ...
"""

import argparse
import concurrent.futures
import glob
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import e2e_dedup  # noqa: E402
import make_corpus  # noqa: E402

# img2dataset's best configuration on this machine (2 cores), from `run_bench.py --sweep`
# (bench/README.md has the table): 2 processes x 16 threads, 4 shards per process (375 images
# each for 3000); bigger shards leave a process idle at the end, smaller ones pay process restarts.
PEER_BEST = {"processes": 2, "threads": 16, "shards_per_process": 4}
# Environment that keeps img2dataset and its imports offline: no wandb, no update checks.
OFFLINE_ENV = {
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "WANDB_SILENT": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "no_proxy": "*",
    "NO_PROXY": "*",
}
SAMPLE_EVERY_S = 0.2


# ---------------------------------------------------------------------------------------------
# nginx


class Nginx:
    """nginx in the foreground as our child, from bench/nginx.conf, serving the corpus on loopback."""

    def __init__(self, workdir, corpus, port):
        self.workdir, self.corpus, self.port = workdir, corpus, port
        self.proc = None

    def __enter__(self):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(exe):
            sys.exit("nginx is not installed: `apt-get install -y nginx` (make bench does it)")
        with socket_probe(self.port) as in_use:
            if in_use:
                sys.exit(f"127.0.0.1:{self.port} is already in use; pick another --port")
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.workdir, "nginx-tmp", sub), exist_ok=True)
        with open(os.path.join(HERE, "nginx.conf")) as f:
            conf = f.read()
        conf = (
            conf.replace("@WORKDIR@", self.workdir).replace("@PORT@", str(self.port)).replace("@CORPUS@", self.corpus)
        )
        path = os.path.join(self.workdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            [exe, "-c", path, "-p", self.workdir + "/"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                status, _ = http_get(self.port, "/health")
                if status == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        sys.exit("nginx did not answer on /health within 10 s")

    def processes(self):
        try:
            master = psutil.Process(self.proc.pid)
            return [master] + master.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self):
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, pid file removed
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class socket_probe:  # noqa: N801 (used like a function: `with socket_probe(...)`)
    """Context manager yielding True when something already listens on 127.0.0.1:port."""

    def __init__(self, port):
        self.port = port

    def __enter__(self):
        import socket

        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def __exit__(self, *exc):
        return False


def http_get(port, path, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body
    finally:
        if own:
            conn.close()


def serve_ceiling(port, names, threads=8):
    """What nginx + a bare keep-alive client deliver on loopback: an upper bound on fetching."""
    chunks = [names[i::threads] for i in range(threads)]

    def fetch(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        for name in chunk:
            status, body = http_get(port, f"/img/{name}", conn)
            if status != 200:
                raise RuntimeError(f"nginx answered {status} for {name}")
            n += len(body)
        conn.close()
        return n

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(fetch, chunks))
    wall = time.perf_counter() - t0
    return {
        "images": len(names),
        "wall_s": round(wall, 2),
        "images_per_s": round(len(names) / wall, 1),
        "mb_per_s": round(total / wall / 1e6, 1),
        "client_threads": threads,
    }


# ---------------------------------------------------------------------------------------------
# measuring one run


class TreeSampler(threading.Thread):
    """Peak summed RSS and PSS of a process tree, sampled every SAMPLE_EVERY_S seconds."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self.samples = 0
        self.last_cpu = {}  # pid -> (role, user+sys CPU s when last seen): the CPU split by role
        self.timeline = []  # (seconds since start, tree CPU s so far): how busy the cores were when
        self._t0 = time.perf_counter()

    def cpu_by_role(self):
        """CPU seconds of the tree by process role, as last sampled (misses each process's last
        SAMPLE_EVERY_S): where a run's CPU went, e.g. the Beam process against its hash workers."""
        roles = {}
        for role, cpu in self.last_cpu.values():
            roles[role] = round(roles.get(role, 0.0) + cpu, 2)
        return roles

    def run(self):
        while not self.stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            rss = pss = 0
            for p in procs:
                try:
                    m = p.memory_full_info()  # reads smaps_rollup: gives PSS as well as RSS
                    rss += m.rss
                    pss += getattr(m, "pss", m.rss)
                    if p.pid not in self.last_cpu:
                        self.last_cpu[p.pid] = (_role(p), 0.0)
                    t = p.cpu_times()
                    self.last_cpu[p.pid] = (self.last_cpu[p.pid][0], t.user + t.system)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            spent = sum(cpu for _, cpu in self.last_cpu.values())
            self.timeline.append((round(time.perf_counter() - self._t0, 2), round(spent, 2)))
            self.max_procs = max(self.max_procs, len(procs))
            self.samples += 1
            self.stop.wait(SAMPLE_EVERY_S)


def _role(process):
    """A process's role in a run: the module of `python -m M`, a script's or executable's name."""
    try:
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    scripts = [a for a in argv[1:] if a.endswith(".py") or "/bin/" in a]
    return os.path.basename((scripts or argv or ["?"])[0])


def _busy_cpu_seconds():
    t = psutil.cpu_times()
    # irq/softirq left out: loopback TCP is processed there, and it is the run's own traffic.
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "steal"))


def wait_quiet(max_wait_s, threshold_pct=10.0, window_s=2.0):
    """Wait (at most max_wait_s) until the machine's CPUs are idle but for threshold_pct; returns the last %."""
    deadline = time.time() + max_wait_s
    busy = psutil.cpu_percent(interval=window_s)
    if busy > threshold_pct and max_wait_s > 0:
        print(f"  machine busy ({busy:.0f}% CPU used by others): waiting up to {max_wait_s:.0f} s", flush=True)
        while busy > threshold_pct and time.time() < deadline:
            busy = psutil.cpu_percent(interval=window_s)
    return busy


def run_measured(cmd, log_path, env=None, cwd=None, timeout=3600, nginx=None, quiet_wait_s=0):
    """Run cmd to completion; wall time, CPU, peak memory of its tree, and the machine's other load."""
    busy_before = wait_quiet(quiet_wait_s) if quiet_wait_s else None
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0 = _busy_cpu_seconds()
    ng0 = nginx.cpu_seconds() if nginx else 0.0
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group, nothing else
            rc = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # interrupted: take the run down with us
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    busy = _busy_cpu_seconds() - busy0
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    own = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    ng = (nginx.cpu_seconds() - ng0) if nginx else 0.0
    other = max(0.0, busy - cpu - own - ng)
    return {
        "returncode": rc,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "nginx_cpu_s": round(ng, 2),
        "other_cpu_pct": round(100 * other / (wall * psutil.cpu_count()), 1),
        "busy_pct_before": busy_before,
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        "max_processes": sampler.max_procs,
        "cpu_by_role_s": sampler.cpu_by_role(),
        "cpu_timeline": sampler.timeline,
        "log": log_path,
    }


# ---------------------------------------------------------------------------------------------
# the two contenders


def peer_command(peer_python, manifest_header, out, processes, threads, shard_size, reencode=False):
    exe = os.path.join(os.path.dirname(peer_python), "img2dataset")
    cmd = [
        exe,
        "--url_list",
        manifest_header,
        "--input_format",
        "tsv",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "parquet",
        "--output_folder",
        out,
        "--processes_count",
        str(processes),
        "--thread_count",
        str(threads),
        "--number_sample_per_shard",
        str(shard_size),
        "--resize_mode",
        "no",
        "--compute_hash",
        "sha256",
        "--disallowed_header_directives",
        "[]",  # no X-Robots-Tag opt-out check: nothing skipped
        "--enable_wandb",
        "False",
        "--timeout",
        "30",
        "--retries",
        "0",
    ]
    if not reencode:
        # Keep the original bytes (as our blobs do) and skip EXIF parsing (we do none): the
        # peer does no more work than ours. --peer-reencode measures img2dataset's defaults.
        cmd += ["--skip_reencode", "True", "--extract_exif", "False"]
    return cmd


def _name_of(url):
    return url.rsplit("/", 1)[-1]


def check_peer(out, truth):
    ok = verified = 0
    for path in sorted(glob.glob(os.path.join(out, "*.parquet"))):
        t = pq.read_table(path, columns=["url", "status", "sha256", "original_width", "original_height"])
        for r in t.to_pylist():
            if r["status"] != "success":
                continue
            ok += 1
            exp = truth.get(_name_of(r["url"]))
            if (
                exp
                and r["sha256"] == exp["sha256"]
                and (r["original_width"], r["original_height"]) == (exp["width"], exp["height"])
            ):
                verified += 1
    return {"images_ok": ok, "verified": verified}


BUSY_PCT = 10.0  # other processes' share of the CPUs above which a run is not trusted


def retry_if_busy(args, run):
    """run() again (up to --retry-busy times) while other processes took > BUSY_PCT of the CPUs."""
    r = run()
    for attempt in range(args.retry_busy):
        if r["other_cpu_pct"] <= BUSY_PCT:
            break
        print(
            f"  other processes took {r['other_cpu_pct']}% of the CPUs during the run: again"
            f" ({attempt + 1}/{args.retry_busy})",
            flush=True,
        )
        discarded = r.get("discarded_busy_runs", 0) + 1
        r = run()
        r["discarded_busy_runs"] = discarded
    return r


def run_peer(args, p, truth, out_root, tag, processes, threads, shard_size, nginx, reencode=False):
    return retry_if_busy(
        args, lambda: _run_peer(args, p, truth, out_root, tag, processes, threads, shard_size, nginx, reencode)
    )


def _run_peer(args, p, truth, out_root, tag, processes, threads, shard_size, nginx, reencode=False):
    out = os.path.join(out_root, tag)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **OFFLINE_ENV}
    cmd = peer_command(args.peer_python, p["manifest_header"], out, processes, threads, shard_size, reencode)
    r = run_measured(cmd, out + ".log", env=env, cwd=args.workdir, nginx=nginx, quiet_wait_s=args.wait_quiet)
    r.update(check_peer(out, truth))
    r.update(
        {
            "tool": "img2dataset 1.47",
            "config": {"processes": processes, "threads": threads, "shard_size": shard_size, "reencode": reencode},
            "command": " ".join(cmd),
        }
    )
    r["images_per_s"] = round(r["images_ok"] / r["wall_s"], 1)
    shutil.rmtree(out, ignore_errors=True)  # parquet holds every image: don't keep 300 MB per run
    return r


def ours_available(our_python, root):
    """True when the project's pipelines.ingest can be imported by our_python from root."""
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('pipelines.ingest') else 3)"
    try:
        return subprocess.run([our_python, "-c", code], cwd=root, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_ours(out, truth):
    """Counts from OUT/images/*.parquet (CONTRACT.md columns), checked against the corpus truth."""
    res = {"images_ok": 0, "verified": 0, "rows": 0, "with_phash_dhash": 0, "blobs_present": 0, "rows_in_clusters": 0}
    files = sorted(glob.glob(os.path.join(out, "images", "*.parquet")))
    for path in files:
        t = pq.read_table(path)
        cols = set(t.column_names)
        for r in t.to_pylist():
            res["rows"] += 1
            if r.get("cluster_id") is not None:
                res["rows_in_clusters"] += 1
            if r.get("status") != "ok":
                continue
            res["images_ok"] += 1
            exp = truth.get(_name_of(r["url"]))
            if (
                exp
                and r.get("sha256") == exp["sha256"]
                and (r.get("width"), r.get("height")) == (exp["width"], exp["height"])
            ):
                res["verified"] += 1
            if r.get("phash") and r.get("dhash"):
                res["with_phash_dhash"] += 1
            blob = r.get("blob") if "blob" in cols else None
            if blob and (blob.startswith("gs://") or os.path.exists(blob.removeprefix("file://"))):
                res["blobs_present"] += 1
    return res


def run_ours(args, p, truth, out_root, tag, nginx):
    return retry_if_busy(args, lambda: _run_ours(args, p, truth, out_root, tag, nginx))


def _run_ours(args, p, truth, out_root, tag, nginx):
    # >>> HOOK: our ingest. The command is the public one of CONTRACT.md; extra Beam options
    # (e.g. --direct_num_workers=2) come from --ours-arg / BENCH_OURS_ARGS in bench/bench.mk.
    out = os.path.join(out_root, tag)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        args.our_python,
        "-m",
        "pipelines.ingest",
        "--manifest",
        f"cc3m={p['manifest']}",
        "--output",
        out,
        "--allow-network",
        "127.0.0.1/32",
        "--timeout",
        str(args.ours_timeout),
    ]
    cmd += args.ours_arg
    if args.profile:
        # Sampling profile of the whole tree (Beam workers included); it slows the run a little.
        prof = os.path.join(args.workdir, f"profile-{tag}.txt")
        cmd = [args.py_spy, "record", "--subprocesses", "--rate", "50", "--format", "raw", "--output", prof, "--"] + cmd
    r = run_measured(
        cmd, out + ".log", env=dict(os.environ), cwd=args.ours_root, nginx=nginx, quiet_wait_s=args.wait_quiet
    )
    r.update(check_ours(out, truth))
    if args.e2e:
        r["score"] = e2e_dedup.score(e2e_dedup.groups_of_ours(out), args.sources)
    r.update({"tool": "ours (pipelines.ingest, local runner)", "command": " ".join(cmd), "cwd": args.ours_root})
    r["images_per_s"] = round(r["images_ok"] / r["wall_s"], 1)
    if not args.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    return r


# ---------------------------------------------------------------------------------------------
# reporting


def _best(runs):
    good = [r for r in runs if r["returncode"] == 0 and r["images_ok"]]
    return max(good, key=lambda r: r["images_per_s"]) if good else (runs[0] if runs else None)


def _row(label, r):
    if r is None:
        return f"{label:<22} not run"
    return (
        f"{label:<22}{r['images_ok']:>6}/{r.get('verified', 0):<6}{r['wall_s']:>9.1f}{r['images_per_s']:>10.1f}"
        f"{r['peak_rss_mb']:>13.0f}{r['peak_pss_mb']:>10.0f}{r['cpu_s']:>8.1f}{r['other_cpu_pct']:>8.1f}"
        f"{'' if r['returncode'] == 0 else '  rc=' + str(r['returncode'])}"
    )


def print_report(res, out=sys.stdout):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    c = res["corpus"]
    p("")
    p(
        f"corpus: {c['images']} JPEGs, {c['total_mb']} MB, mean {c['mean_megapixels']} MP, bytes p10/median/p90/max "
        f"{'/'.join(str(x) for x in c['bytes_p10_median_p90_max'])}; machine: {res['machine']['cpus']} CPUs,"
        f" {res['machine']['mem_gb']} GB"
    )
    if res.get("serve_ceiling"):
        s = res["serve_ceiling"]
        p(
            f"serve ceiling (nginx + bare keep-alive client, no processing): {s['images_per_s']} images/s,"
            f" {s['mb_per_s']} MB/s"
        )
    p(
        f"{'run':<22}{'ok/verified':<13}{'wall s':>9}{'images/s':>10}{'peak RSS MB':>13}{'PSS MB':>10}"
        f"{'CPU s':>8}{'other%':>8}"
    )
    for label, runs in (("img2dataset 1.47", res["peer"]), ("ours", res["ours"])):
        for i, r in enumerate(runs):
            p(_row(label + (f" #{i + 1}" if len(runs) > 1 else ""), r))
    b = _best(res["ours"])
    if b and b["rows"]:
        c = res["corpus"]
        p(
            f"ours, work checked in OUT: {b['rows']} rows, {b['with_phash_dhash']} with pHash+dHash, "
            f"{b['blobs_present']}"
            f" blobs present, {b['rows_in_clusters']} rows in clusters (corpus: {c['exact_dups']} exact and"
            f" {c['near_dups']} near duplicates of other images)"
        )
    for label, runs in (("img2dataset", res["peer"]), ("ours", res["ours"])):
        b = _best(runs)
        if b and b.get("cpu_by_role_s"):
            by_cpu = sorted(b["cpu_by_role_s"].items(), key=lambda kv: -kv[1])
            roles = ", ".join(f"{role} {cpu}" for role, cpu in by_cpu)
            p(f"CPU s by process, {label} (sampled): {roles}")
    if res.get("ours_skipped"):
        p(f"{'ours':<22} SKIPPED: {res['ours_skipped']}")
    s = res["summary"]
    if s.get("ratio_images_per_s") is not None:
        p(
            f"ratio ours/img2dataset: throughput x{s['ratio_images_per_s']}, peak RSS x{s['ratio_peak_rss']},"
            f" CPU per image x{s['ratio_cpu_per_image']}, wall x{s['wall_speedup']} faster"
            "  (issue 16 goals: CPU per image <= x0.7, wall >= x1.3 faster)"
        )
    f = res.get("floor")
    if f:
        fl_full, fl_draft = f["floor_full_images_per_s_2cores_ideal"], f["floor_draft_images_per_s_2cores_ideal"]
        m_full = f["floor_full_images_per_s_measured"]["2cores"]
        m_draft = f["floor_draft_images_per_s_measured"]["2cores"]
        p(
            f"CPU floor, 2 cores (decode + pHash + dHash + sha256 + md5, no I/O; bench/cpu_floor.py): full decode"
            f" {fl_full} images/s, draft decode {fl_draft} images/s (2 x one core's CPU time; measured on 2"
            f" processes: {m_full} and {m_draft})"
        )
        for label, runs in (("img2dataset", res["peer"]), ("ours", res["ours"])):
            b = _best(runs)
            if b and b["images_ok"]:
                p(
                    f"  {label}: {b['images_per_s']} images/s = {100 * b['images_per_s'] / fl_full:.0f}% of the"
                    f" full-decode floor, {100 * b['images_per_s'] / fl_draft:.0f}% of the draft-decode floor"
                )
    if res.get("e2e_peer"):
        for i, r in enumerate(res["e2e_peer"]):
            p(
                f"e2e img2dataset+imagededup #{i + 1}: wall {r['wall_s']} s (download {r['download']['wall_s']} +"
                f" imagededup {r['dedup']['wall_s']}), CPU {r['cpu_s']} s, other {r['other_cpu_pct']}%,"
                f" duplicates {r.get('score')}"
            )
        b = _best(res["ours"])
        if b:
            p(f"e2e ours (the ingest alone): wall {b['wall_s']} s, CPU {b['cpu_s']} s, duplicates {b.get('score')}")
        if s.get("e2e_speedup") is not None:
            p(
                f"e2e speed-up ours vs img2dataset+imagededup: x{s['e2e_speedup']} wall, x{s['e2e_cpu_ratio']} CPU"
                " (goal: >= x3 faster with equal or better duplicates)"
            )
    busy = [r for r in res["peer"] + res["ours"] + res.get("e2e_peer", []) if r["other_cpu_pct"] > BUSY_PCT]
    if busy:
        p(
            f"WARNING: other processes used >10% of the CPUs during {len(busy)} run(s): figures are not reliable,"
            " rerun on a quiet machine"
        )


def summarize(res):
    peer, ours = _best(res["peer"]), _best(res["ours"])
    s = {"peer_best": peer and {k: peer[k] for k in ("images_per_s", "wall_s", "peak_rss_mb", "peak_pss_mb")}}
    if peer and ours and peer["images_ok"] and ours["images_ok"]:
        s["ours_best"] = {k: ours[k] for k in ("images_per_s", "wall_s", "peak_rss_mb", "peak_pss_mb")}
        s["ratio_images_per_s"] = round(ours["images_per_s"] / peer["images_per_s"], 2)
        s["ratio_peak_rss"] = round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 2)
        s["ratio_cpu_per_image"] = round((ours["cpu_s"] / ours["images_ok"]) / (peer["cpu_s"] / peer["images_ok"]), 2)
        s["wall_speedup"] = round(peer["wall_s"] / ours["wall_s"], 2)
    e2e = [r for r in res.get("e2e_peer", []) if r["returncode"] == 0]
    if e2e and ours:
        best = min(e2e, key=lambda r: r["wall_s"])
        s["e2e_speedup"] = round(best["wall_s"] / ours["wall_s"], 2)
        s["e2e_cpu_ratio"] = round(ours["cpu_s"] / best["cpu_s"], 2)
    return s


# ---------------------------------------------------------------------------------------------
# sweep of img2dataset's processes x threads x shard size


def sweep(args, p, truth, out_root, nginx):
    n = args.count
    rows = []

    def one(processes, threads, shard_size):
        runs = [
            run_peer(
                args,
                p,
                truth,
                out_root,
                f"sweep-p{processes}-t{threads}-s{shard_size}",
                processes,
                threads,
                shard_size,
                nginx,
            )
            for _ in range(args.repeat)
        ]
        b = _best(runs)
        row = {
            "processes": processes,
            "threads": threads,
            "shard_size": shard_size,
            "images_per_s": b["images_per_s"],
            "wall_s": b["wall_s"],
            "peak_rss_mb": b["peak_rss_mb"],
            "peak_pss_mb": b["peak_pss_mb"],
            "cpu_s": b["cpu_s"],
            "other_cpu_pct": b["other_cpu_pct"],
            "images_ok": b["images_ok"],
            "all_images_per_s": [r["images_per_s"] for r in runs],
        }
        rows.append(row)
        print(
            f"  p={processes} t={threads:<4} shard={shard_size:<5} {row['images_per_s']:>7.1f} images/s"
            f"  wall {row['wall_s']:>6.1f} s  RSS {row['peak_rss_mb']:>6.0f} MB  other {row['other_cpu_pct']}%"
            f"  (runs: {row['all_images_per_s']})",
            flush=True,
        )
        return row

    print("sweep stage 1: processes x threads (shard size: 4 shards per process)", flush=True)
    for processes in args.sweep_processes:
        for threads in args.sweep_threads:
            one(processes, threads, max(50, -(-n // (4 * processes))))
    best = max(rows, key=lambda r: r["images_per_s"])
    print("sweep stage 2: shard size at the best processes x threads", flush=True)
    for per_proc in (1, 8):
        size = max(50, -(-n // (per_proc * best["processes"])))
        if all(
            r["shard_size"] != size or r["processes"] != best["processes"] or r["threads"] != best["threads"]
            for r in rows
        ):
            one(best["processes"], best["threads"], size)
    best = max(rows, key=lambda r: r["images_per_s"])
    print(
        f"best: processes={best['processes']} threads={best['threads']} shard_size={best['shard_size']}"
        f" -> {best['images_per_s']} images/s"
    )
    return {"rows": rows, "best": best}


# ---------------------------------------------------------------------------------------------


def reexec_in_netns(argv):
    """Run this script again in a new network namespace that has only loopback (needs root)."""
    script = 'ip link set lo up && exec "$@"'
    cmd = ["unshare", "--net", "--", "sh", "-c", script, "sh", sys.executable, os.path.abspath(__file__)] + argv
    env = {**os.environ, "BENCH_IN_NETNS": "1"}
    child = subprocess.Popen(cmd, env=env)  # unshare and sh exec: child.pid ends up being the inner python
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds the context managers: nginx and the running tool stop


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=make_corpus.DEFAULT_COUNT, help="corpus size")
    ap.add_argument("--port", type=int, default=make_corpus.DEFAULT_PORT)
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool; the best one is compared")
    ap.add_argument("--peer-python", default=os.path.join(ROOT, ".venv-img2dataset", "bin", "python"))
    ap.add_argument("--our-python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--peer-processes", type=int, default=PEER_BEST["processes"])
    ap.add_argument("--peer-threads", type=int, default=PEER_BEST["threads"])
    ap.add_argument(
        "--peer-shard-size",
        type=int,
        default=None,
        help="images per img2dataset shard (default: count / (4 x processes))",
    )
    ap.add_argument(
        "--peer-reencode",
        action="store_true",
        help="also run img2dataset with its defaults (re-encode every image, parse EXIF)",
    )
    ap.add_argument(
        "--ours-root",
        default=ROOT,
        help="checkout whose pipelines.ingest is benchmarked (run from there with -m); default: this one",
    )
    ap.add_argument("--ours-timeout", type=float, default=30)
    ap.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        help="extra argument for our ingest (repeatable), e.g. --ours-arg=--direct_num_workers=2",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run our ingest under py-spy (collapsed stacks in WORKDIR/profile-ours-N.txt); slows it",
    )
    ap.add_argument("--py-spy", default=os.path.join(ROOT, ".venv", "bin", "py-spy"))
    ap.add_argument("--keep-output", action="store_true", help="keep our ingest's output under WORKDIR/runs")
    ap.add_argument(
        "--e2e",
        action="store_true",
        help="also run img2dataset (files) + imagededup end to end and score both tools' duplicates"
        " (bench/e2e_dedup.py)",
    )
    ap.add_argument(
        "--bench-python",
        default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
        help="the python of .venv-bench (imagededup), for --e2e",
    )
    ap.add_argument("--e2e-threshold", type=int, default=10, help="imagededup's max_distance_threshold (its default)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--skip-probe", action="store_true", help="skip the serve-ceiling probe")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--floor-sample", type=int, default=1000)
    ap.add_argument("--sweep", action="store_true", help="sweep img2dataset's processes x threads x shard size")
    ap.add_argument("--sweep-processes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 3, 4])
    ap.add_argument("--sweep-threads", type=lambda v: [int(x) for x in v.split(",")], default=[16, 64])
    ap.add_argument(
        "--netns",
        choices=("auto", "on", "off"),
        default="auto",
        help="run inside a loopback-only network namespace (auto: when root and unshare exist)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120,
        help="before each run, wait up to this many seconds for other processes to go idle (0: don't)",
    )
    ap.add_argument(
        "--retry-busy",
        type=int,
        default=2,
        help=f"run again (this many times at most) when others took > {BUSY_PCT:.0f}%% of the CPUs",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the whole benchmark (root may go negative to outrank background load)",
    )
    ap.add_argument("--json", default=None, help="results file (default WORKDIR/results.json)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)

    if os.environ.get("BENCH_IN_NETNS") != "1" and args.netns != "off":
        can = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
        if can:
            return reexec_in_netns(argv)
        if args.netns == "on":
            sys.exit("--netns on needs root, unshare and ip")
        print("note: not root or no unshare: running in the machine's network namespace (loopback only)")

    if args.nice:
        os.nice(args.nice)  # inherited by nginx and both tools alike
    if args.peer_shard_size is None:
        args.peer_shard_size = max(1, -(-args.count // (PEER_BEST["shards_per_process"] * args.peer_processes)))
    # abspath, not realpath: a venv's python must keep its venv path. Tools run from other cwds.
    for name in ("workdir", "peer_python", "our_python", "ours_root", "py_spy", "bench_python"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    os.makedirs(args.workdir, exist_ok=True)
    out_root = os.path.join(args.workdir, "runs")
    os.makedirs(out_root, exist_ok=True)
    t_start = time.perf_counter()
    print(f"corpus: {args.count} images in {args.workdir}/corpus (built once, then reused)", flush=True)
    p = make_corpus.build(args.count, args.port, args.workdir)
    truth = make_corpus.read_truth(p)
    res = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": psutil.cpu_count(),
            "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "netns": os.environ.get("BENCH_IN_NETNS") == "1",
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "corpus": make_corpus.describe(p),
        "memory_method": "psutil: sum over the process tree of RSS and of PSS (smaps_rollup), sampled every 0.2 s",
        "peer": [],
        "ours": [],
        "e2e_peer": [],
    }
    args.offline_env, args.bench_root = OFFLINE_ENV, ROOT
    args.sources = e2e_dedup.duplicate_sources_of(make_corpus, args.count) if args.e2e else None
    if not os.path.exists(args.peer_python) and not args.skip_peer:
        sys.exit(f"no img2dataset venv at {args.peer_python}: `make bench-venvs` (bench/bench.mk) creates it")

    with Nginx(args.workdir, p["corpus"], args.port) as nginx:
        names = sorted(truth)
        http_get(args.port, f"/img/{names[0]}")
        if not args.skip_probe:
            serve_ceiling(args.port, names)  # first pass warms the page cache and nginx's file cache
            res["serve_ceiling"] = serve_ceiling(args.port, names)
            print(f"serve ceiling: {res['serve_ceiling']}", flush=True)
        if args.sweep:
            res["sweep"] = sweep(args, p, truth, out_root, nginx)
            with open(os.path.join(args.workdir, "sweep.json"), "w") as f:
                json.dump(res["sweep"], f, indent=1)
            print(f"sweep written to {os.path.join(args.workdir, 'sweep.json')}")
            return 0
        if not args.skip_peer:
            for i in range(args.repeat):
                r = run_peer(
                    args,
                    p,
                    truth,
                    out_root,
                    f"img2dataset-{i}",
                    args.peer_processes,
                    args.peer_threads,
                    args.peer_shard_size,
                    nginx,
                )
                print(
                    f"img2dataset run {i + 1}: {r['images_ok']} ok in {r['wall_s']} s = {r['images_per_s']}"
                    f" images/s, peak RSS {r['peak_rss_mb']} MB",
                    flush=True,
                )
                res["peer"].append(r)
            if args.peer_reencode:
                r = run_peer(
                    args,
                    p,
                    truth,
                    out_root,
                    "img2dataset-defaults",
                    args.peer_processes,
                    args.peer_threads,
                    args.peer_shard_size,
                    nginx,
                    reencode=True,
                )
                print(f"img2dataset with its defaults (re-encode, EXIF): {r['images_per_s']} images/s", flush=True)
                res["peer_defaults"] = r
        if args.skip_ours:
            res["ours_skipped"] = "--skip-ours"
        elif not ours_available(args.our_python, args.ours_root):
            res["ours_skipped"] = (
                f"pipelines.ingest not importable by {args.our_python} from {args.ours_root};"
                " the hook is run_ours() in bench/run_bench.py"
            )
            print(f"ours: SKIPPED: {res['ours_skipped']}", flush=True)
        else:
            for i in range(args.repeat):
                r = run_ours(args, p, truth, out_root, f"ours-{i}", nginx)
                print(
                    f"ours run {i + 1}: {r['images_ok']} ok in {r['wall_s']} s = {r['images_per_s']} images/s,"
                    f" peak RSS {r['peak_rss_mb']} MB (rc {r['returncode']}, log {r['log']})",
                    flush=True,
                )
                res["ours"].append(r)
        if args.e2e:
            for i in range(args.repeat):
                r = retry_if_busy(
                    args,
                    lambda i=i: e2e_dedup.run_peer_e2e(
                        args,
                        p,
                        out_root,
                        f"e2e-peer-{i}",
                        nginx,
                        args.sources,
                        run_measured,
                        peer_command,
                        args.e2e_threshold,
                    ),
                )
                print(
                    f"img2dataset + imagededup run {i + 1}: {r['wall_s']} s wall, {r['cpu_s']} CPU s,"
                    f" score {r.get('score')}",
                    flush=True,
                )
                res["e2e_peer"].append(r)

    if not args.skip_floor:
        fl_json = os.path.join(args.workdir, "cpu_floor.json")
        fl_cmd = [
            args.our_python,
            os.path.join(HERE, "cpu_floor.py"),
            "--corpus",
            p["corpus"],
            "--sample",
            str(args.floor_sample),
            "--json",
            fl_json,
        ]
        print("cpu floor: " + " ".join(fl_cmd), flush=True)
        wait_quiet(args.wait_quiet)
        if subprocess.run(fl_cmd).returncode == 0:
            with open(fl_json) as f:
                res["floor"] = json.load(f)
    res["summary"] = summarize(res)
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    print_report(res)
    path = args.json or os.path.join(args.workdir, "results.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"results: {path} (total {res['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
