"""Export throughput, side by side with img2dataset's resizer in the same run: `make bench-export`.

Both sides start from the same images on local disk (bench/make_corpus.py's photo-like JPEGs,
256-1600 px) and write WebDataset tar shards of the same size:

  * ours: `python -m pipelines.export --format webdataset` on an ingest-shaped OUT whose rows
    point at the corpus files (every row ok, none a duplicate: every image is exported), with the
    local runner's defaults;
  * img2dataset 1.47 (its own venv): its `Resizer` and `WebDatasetSampleWriter`, one process per
    core as its downloader runs them, each reading its share of the files.

Two settings: no resize (original bytes; img2dataset with `disable_all_reencoding`) and a resize
to --size N in --mode (both re-encode JPEG at quality 95, never upscaling: img2dataset's
`resize_only_if_bigger`). Wall time is the whole process, start-up included, the median of
--repeat runs alternating the order; images/s = images written / wall time. A run of each side
on --startup-count images measures the fixed costs (interpreter, imports, Beam's graph and
stages); the marginal figures are the full run's minus those, per extra image. Results:
bench/work/export_bench.json and a table; the ratios are ours / img2dataset.

    python -m bench.bench_export [--count 1000] [--size 256] [--mode center_crop] [--repeat 2]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import make_corpus  # noqa: E402
from transforms import schema  # noqa: E402

OFFLINE_ENV = {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}

# The peer: img2dataset's resizer and WebDataset writer over a list of files, one process per core.
PEER_SCRIPT = r"""
import json, multiprocessing, os, sys
import pyarrow as pa
from img2dataset.resizer import Resizer
from img2dataset.writer import WebDatasetSampleWriter

job = json.load(open(sys.argv[1]))
SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("width", pa.int32()),
                    ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
                    ("error_message", pa.string())])

def shard(args):
    shard_id, items = args
    if job["mode"] == "no":
        resizer = Resizer(0, "no", True, disable_all_reencoding=True)
    else:
        resizer = Resizer(job["size"], job["mode"], True, encode_format="jpg", encode_quality=95)
    writer = WebDatasetSampleWriter(shard_id, job["out"], True, 5, SCHEMA, "jpg")
    done = 0
    for key, path, caption in items:
        with open(path, "rb") as stream:
            img, width, height, ow, oh, err = resizer(stream)
        writer.write(img, key, caption, {"key": key, "caption": caption, "width": width, "height": height,
                                         "original_width": ow, "original_height": oh, "error_message": err})
        done += img is not None
    writer.close()
    return done

items = job["items"]
size = job["shard_size"]
shards = [(i // size, items[i:i + size]) for i in range(0, len(items), size)]
with multiprocessing.Pool(job["processes"]) as pool:
    print(json.dumps({"images": sum(pool.imap_unordered(shard, shards))}))
"""


def write_input(truth, corpus, out):
    """An ingest-shaped OUT whose ok rows point at the corpus files (no copy of the bytes)."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for i, (name, t) in enumerate(sorted(truth.items())):
        rows.append(
            schema.to_parquet_record(
                schema.new_row(
                    "cc3m",
                    f"cc3m:{i + 1}",
                    f"http://127.0.0.1/img/{name}",
                    f"caption {i}",
                    status=schema.OK,
                    sha256=t["sha256"],
                    phash="0" * 16,
                    width=t["width"],
                    height=t["height"],
                    format="JPEG",
                    blob=os.path.join(corpus, name),
                    is_canonical=True,
                    is_placeholder=False,
                )
            )
        )
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema.IMAGE_SCHEMA), os.path.join(out, "images", "part-0.parquet")
    )
    return len(rows)


def run_ours(python, out, exp, shard_size, size, mode):
    cmd = [
        python,
        "-m",
        "pipelines.export",
        "--input",
        out,
        "--output",
        exp,
        "--format",
        "webdataset",
        f"--shard-size={shard_size}",
    ]
    if mode != "no":
        cmd += [f"--resize={size}", f"--resize-mode={mode}"]
    clock = _Clock()
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    wall, cpu = clock.stop()
    if done.returncode:
        raise SystemExit(f"our export failed ({done.returncode}): {done.stderr[-2000:]}")
    with open(os.path.join(exp, "summary.json")) as handle:
        summary = json.load(handle)
    return {
        "images": summary["exported"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "job_wall_s": summary["timings"]["wall_seconds"],
        "bytes": summary["bytes"],
    }


def run_peer(python, truth, corpus, exp, shard_size, size, mode, processes, workdir):
    os.makedirs(exp, exist_ok=True)
    items = [[f"{i:09d}", os.path.join(corpus, name), f"caption {i}"] for i, name in enumerate(sorted(truth))]
    job = {"items": items, "out": exp, "shard_size": shard_size, "size": size, "mode": mode, "processes": processes}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=workdir, delete=False) as job_file:
        json.dump(job, job_file)
    script = os.path.join(workdir, "peer_export.py")
    with open(script, "w") as script_file:
        script_file.write(PEER_SCRIPT)
    clock = _Clock()
    done = subprocess.run(
        [python, script, job_file.name], env=dict(os.environ, **OFFLINE_ENV), cwd="/", capture_output=True, text=True
    )
    wall, cpu = clock.stop()
    os.remove(job_file.name)
    if done.returncode:
        raise SystemExit(f"img2dataset side failed ({done.returncode}): {done.stderr[-2000:]}")
    images = json.loads(done.stdout.strip().splitlines()[-1])["images"]
    size_bytes = sum(os.path.getsize(os.path.join(exp, f)) for f in os.listdir(exp) if f.endswith(".tar"))
    return {"images": images, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "bytes": size_bytes}


class _Clock:
    """Wall time and the CPU time (user + system) of the child processes run meanwhile, their
    children included (the peer's pool): CPU time stays meaningful on a busy shared machine."""

    def __init__(self):
        self._wall = time.perf_counter()
        self._cpu = self._children_cpu()

    @staticmethod
    def _children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def stop(self):
        return time.perf_counter() - self._wall, self._children_cpu() - self._cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="images in the corpus")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--mode", default="center_crop", choices=("keep_ratio", "center_crop", "border"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--startup-count", type=int, default=20, help="images of the start-up runs that measure fixed costs (0: none)"
    )
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="img2dataset's processes")
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
    ap.add_argument("--our-python", default=sys.executable)
    ap.add_argument("--peer-python", default=os.path.join(ROOT, ".venv-img2dataset", "bin", "python"))
    args = ap.parse_args(argv)
    args.peer_python, args.our_python = os.path.abspath(args.peer_python), os.path.abspath(args.our_python)
    if not os.path.exists(args.peer_python):
        raise SystemExit(f"no img2dataset venv at {args.peer_python}: `make bench-venvs` (bench/bench.mk) creates it")
    paths = make_corpus.build(args.count, workdir=args.workdir)
    truth = make_corpus.read_truth(paths)
    small = dict(sorted(truth.items())[: args.startup_count])
    root = os.path.join(args.workdir, "export")
    subprocess.run(["rm", "-rf", root], check=True)
    out, out_small = os.path.join(root, "out"), os.path.join(root, "out-small")
    count = write_input(truth, paths["corpus"], out)
    write_input(small, paths["corpus"], out_small)
    shard_size = max(1, count // (4 * args.processes))  # 4 shards per process, as run_bench.py's peer
    results = {
        "count": count,
        "size": args.size,
        "mode": args.mode,
        "shard_size": shard_size,
        "startup_count": len(small),
        "cpus": os.cpu_count(),
        "settings": {},
    }

    def measure(side, mode, label, subset, table):
        exp = os.path.join(root, f"{side}-{mode}-{label}")
        if side == "ours":
            result = run_ours(args.our_python, table, exp, shard_size, args.size, mode)
        else:
            result = run_peer(
                args.peer_python, subset, paths["corpus"], exp, shard_size, args.size, mode, args.processes, root
            )
        result["images_per_s"] = round(result["images"] / result["wall_s"], 1)
        result["cpu_ms_per_image"] = round(1000 * result["cpu_s"] / max(result["images"], 1), 2)
        print(
            f"{mode:>11} {side:<11} {label}: {result['images']} images in {result['wall_s']} s"
            f" = {result['images_per_s']} images/s, {result['cpu_s']} CPU s",
            flush=True,
        )
        subprocess.run(["rm", "-rf", exp], check=True)
        return result

    for mode in ("no", args.mode):
        runs = {"ours": [], "img2dataset": []}
        startup = {}
        for r in range(args.repeat):
            order = ("ours", "img2dataset") if r % 2 == 0 else ("img2dataset", "ours")
            for side in order:
                runs[side].append(measure(side, mode, f"run {r + 1}", truth, out))
        for side in ("ours", "img2dataset"):
            # start-up and fixed costs: the same job on a handful of images
            startup[side] = measure(side, mode, "start-up", small, out_small) if small else None
        setting = {"runs": runs, "startup": startup}
        for side in runs:
            wall = statistics.median(x["wall_s"] for x in runs[side])
            cpu = statistics.median(x["cpu_s"] for x in runs[side])
            figures = {"images_per_s": round(count / wall, 1), "cpu_ms_per_image": round(1000 * cpu / count, 2)}
            if startup[side]:
                extra = count - startup[side]["images"]
                figures.update(
                    startup_wall_s=startup[side]["wall_s"],
                    startup_cpu_s=startup[side]["cpu_s"],
                    marginal_images_per_s=round(extra / max(wall - startup[side]["wall_s"], 1e-9), 1),
                    marginal_cpu_ms_per_image=round(1000 * (cpu - startup[side]["cpu_s"]) / extra, 2),
                )
            setting[side] = figures
        setting["ratios_ours_over_img2dataset"] = {
            name: round(setting["ours"][name] / setting["img2dataset"][name], 2)
            for name in setting["ours"]
            if name in setting["img2dataset"] and setting["img2dataset"][name]
        }
        results["settings"][mode] = setting
    path = os.path.join(args.workdir, "export_bench.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    print(
        f"\n{count} images, {os.cpu_count()} cores, shards of {shard_size}; median of {args.repeat} runs;"
        f" start-up = the same job on {len(small)} images; marginal = (full - start-up) / extra images"
    )
    names = (
        "images_per_s",
        "cpu_ms_per_image",
        "startup_wall_s",
        "startup_cpu_s",
        "marginal_images_per_s",
        "marginal_cpu_ms_per_image",
    )
    print(f"{'setting':<18}{'figure':<28}{'ours':>10}{'img2dataset':>13}{'ours/i2d':>10}")
    for mode, setting in results["settings"].items():
        label = "no resize" if mode == "no" else f"{mode} {args.size}"
        for name in names:
            if name in setting["ours"]:
                print(
                    f"{label:<18}{name:<28}{setting['ours'][name]:>10}{setting['img2dataset'][name]:>13}"
                    f"{setting['ratios_ours_over_img2dataset'].get(name, '-'):>10}"
                )
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
