"""Every job on the offline cluster, submitted as Dataflow would, compared with the local runner.

    python -m deploy.cluster.cluster_check [--keep]     # `make cluster-test` runs its pytest module

One run: builds (or reuses) the worker environment, starts the cluster (portable_cluster.py) and
the demo's loopback web server, uploads the demo sample (five datasets and every side file) to
gs:// and then, for each job, launches it on the cluster through the Flex Template entry point
(deploy/flex_main.py, run by the image's Python with the template parameters the metadata defines,
`--no_wait_until_finish`) and the same job with the local runner on the same gs:// inputs, and
compares the two outputs (rows, statuses, clusters, blobs, verdicts; ordering and timings aside):
- ingest of the demo sample;
- dedup of the cluster's ingest output;
- refresh, two nights with history (the web server changes some answers between the nights);
- export, when pipelines/export.py exists.
A job the Flex Template registry (deploy/jobs.py JOBS) does not hold is launched with its own
command (`python -m pipelines.<job>`) in the same environment. The result is a dict (and
RUN/cluster-report.json): per job its launch, cluster and local seconds and the differences found.
"""

import argparse
import collections
import dataclasses
import datetime
import importlib.util
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from deploy.cluster.portable_cluster import ClusterError, PortableCluster, tail
from deploy.cluster.worker_env import CACHE_DIR, REPO, ensure_worker_env

BUCKET = "cluster-check"
DEMO_TIMEOUT = 10.0  # the demo's slow route answers after this + 1 s; every other route at once (loaded machines)
LAST_REPORT = CACHE_DIR / "cluster-report.json"  # the last run's, printed by `make cluster-test`
VOLATILE = re.compile(r"(_at|_ms|_seconds|seconds|elapsed)$")


def refresh_nights(today: datetime.date | None = None) -> tuple[str, str]:
    """The two refresh nights: today and tomorrow (UTC). Why not fixed dates: the refresh refuses a
    night before its snapshot was fetched (the ingest of this run), and one more than a day ahead.

    Args:
        today: today's UTC date (default: now).
    Returns:
        (first night, second night) as YYYY-MM-DD.
    """
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    return today.isoformat(), (today + datetime.timedelta(days=1)).isoformat()


@dataclasses.dataclass
class JobRun:
    """One job run on the cluster and locally."""

    name: str
    launch_seconds: float | None = None  # the launcher process, submit to exit (it does not wait)
    cluster_seconds: float | None = None  # launcher start to the job DONE on the cluster
    local_seconds: float | None = None  # the same job with the local runner, process start to exit
    differences: list = dataclasses.field(default_factory=list)
    skipped: str | None = None
    figures: dict = dataclasses.field(default_factory=dict)  # from the cluster's summary.json


# ---- storage helpers -------------------------------------------------------------------------------
def upload_tree(bucket, local: pathlib.Path, prefix: str) -> str:
    """Uploads a file or a folder's files under gs://bucket/prefix; returns the gs:// path."""
    local = pathlib.Path(local)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        name = prefix if local.is_file() else f"{prefix}/{path.relative_to(local).as_posix()}"
        bucket.blob(name).upload_from_filename(str(path))
    return f"gs://{bucket.name}/{prefix}"


def listing(client, uri: str) -> dict:
    """{name relative to uri: bytes} of every object under a gs:// folder."""
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    prefix = prefix.rstrip("/") + "/"
    return {blob.name[len(prefix) :]: blob.download_as_bytes() for blob in client.list_blobs(bucket, prefix=prefix)}


def parquet_rows(files: dict, root: str) -> list:
    """Rows of the Parquet objects among `files`, volatile columns dropped, `root` replaced by <OUT>."""
    import pyarrow.parquet as pq

    rows = []
    for name, data in sorted(files.items()):
        if name.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return sorted((normalise(row, root) for row in rows), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def normalise(value, root):
    """A row (or record) without timings and with its own output folder's name abstracted."""
    if isinstance(value, dict):
        return {k: normalise(v, root) for k, v in sorted(value.items()) if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [normalise(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<OUT>")
    return value


def jsonl_records(files: dict, folder: str, root: str) -> list:
    """Sorted, normalised records of the .jsonl objects in `folder`."""
    records = []
    for name, data in files.items():
        if name.startswith(folder + "/") and name.endswith(".jsonl"):
            records += [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return sorted(json.dumps(normalise(r, root), sort_keys=True, default=str) for r in records)


def compare(name: str, cluster, local, limit: int = 3) -> list:
    """Differences between two lists/dicts of comparable items, as a few readable lines."""
    if cluster == local:
        return []
    if isinstance(cluster, list) and isinstance(local, list):
        c, lo = collections.Counter(map(_key, cluster)), collections.Counter(map(_key, local))
        only_c, only_l = list((c - lo).elements()), list((lo - c).elements())
        return [
            f"{name}: {len(cluster)} on the cluster, {len(local)} locally; only on the cluster "
            f"{only_c[:limit]}; only locally {only_l[:limit]}"
        ]
    return [f"{name}: cluster {str(cluster)[:400]} != local {str(local)[:400]}"]


def _key(item):
    return item if isinstance(item, str) else json.dumps(item, sort_keys=True, default=str)


def compare_outputs(client, job: str, cluster_uri: str, local_uri: str) -> list:
    """The differences between two outputs of `job` (both on gs://)."""
    c_files, l_files = listing(client, cluster_uri), listing(client, local_uri)
    if not c_files:
        return [f"{job}: the cluster wrote nothing under {cluster_uri}"]
    differences = []
    for folder in sorted({n.split("/")[0] for n in c_files} | {n.split("/")[0] for n in l_files}):
        c_part = {n: d for n, d in c_files.items() if n.split("/")[0] == folder}
        l_part = {n: d for n, d in l_files.items() if n.split("/")[0] == folder}
        if folder == "blobs":  # content-addressed: names and bytes must be the same
            differences += compare("blobs", sorted(c_part), sorted(l_part))
            differences += [f"blobs: {n} differs" for n in sorted(set(c_part) & set(l_part)) if c_part[n] != l_part[n]]
        elif any(n.endswith(".parquet") for n in c_part) or any(n.endswith(".parquet") for n in l_part):
            differences += compare(
                f"{folder}/*.parquet rows", parquet_rows(c_part, cluster_uri), parquet_rows(l_part, local_uri)
            )
        elif any(n.endswith(".jsonl") for n in c_part):
            differences += compare(
                f"{folder}/*.jsonl",
                jsonl_records(c_part, folder, cluster_uri),
                jsonl_records(l_part, folder, local_uri),
            )
        elif folder == "summary.json":
            c_sum, l_sum = (json.loads(p[folder]) if folder in p else {} for p in (c_part, l_part))
            for field in (
                "rows",
                "counts",
                "verdicts",
                "link_rot",
                "newly_dead",
                "revived",
                "changed",
                "replaced_rows",
                "exported",
                "skipped",
            ):
                if field in c_sum or field in l_sum:
                    differences += compare(
                        f"summary.json {field}",
                        normalise(c_sum.get(field), cluster_uri),
                        normalise(l_sum.get(field), local_uri),
                    )
    return differences


# ---- launching -------------------------------------------------------------------------------------
def template_parameters(job: str) -> dict:
    """{name: regexes} of the job's Flex Template metadata (deploy/templates/<job>-metadata.json)."""
    metadata = json.loads((REPO / "deploy" / "templates" / f"{job}-metadata.json").read_text())
    return {p["name"]: p.get("regexes", []) for p in metadata["parameters"]}


def check_parameters(job: str, params: dict) -> None:
    """Refuses parameters Dataflow would refuse: unknown to the metadata, or not matching its regex."""
    known = template_parameters(job)
    for name, value in params.items():
        if name not in known:
            raise ClusterError(f"{job}: parameter {name} is not in deploy/templates/{job}-metadata.json")
        for regex in known[name]:
            if not re.match(regex, str(value)):
                raise ClusterError(f"{job}: parameter {name}={value} does not match {regex}")


def job_argv(job: str, params: dict) -> list[str]:
    """The job's own command line for template parameters, translated as the Flex Template entry does."""
    from pipelines.launch import flex_template

    actions = flex_template.option_actions(flex_template.options_class(flex_template.job_module(job)))
    return flex_template.to_job_argv([f"--{name}={value}" for name, value in params.items()], actions)


def worker_errors(log: pathlib.Path, lines: int = 6) -> str:
    """The last ERROR lines of the workers' log (each names the step that failed)."""
    found = [
        line
        for line in (log.read_text(errors="replace").splitlines() if log.exists() else [])
        if line.startswith("ERROR:")
    ]
    return "\n".join(line[:600] for line in found[-lines:]) or tail(log)


def is_flex_job(job: str) -> bool:
    from deploy import jobs

    return job in jobs.JOBS


class Launcher:
    """Runs jobs on the cluster (through the Flex Template entry) and locally."""

    def __init__(self, cluster: PortableCluster, run_dir: pathlib.Path):
        self.cluster = cluster
        self.run_dir = run_dir
        # The image copies deploy/flex_main.py to /template/main.py: the launcher runs that copy.
        self.template_main = run_dir / "template" / "main.py"
        self.template_main.parent.mkdir(parents=True, exist_ok=True)
        self.template_main.write_bytes((REPO / "deploy" / "flex_main.py").read_bytes())

    def on_cluster(self, job: str, params: dict, run: JobRun, label: str) -> None:
        """Launches `job` with template parameters `params` and waits for it on the job service."""
        workdir = self.run_dir / f"launcher-{label}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(self.cluster.launcher_env(), BEAM_JOB=job)
        if is_flex_job(job):
            check_parameters(job, params)
            command = [str(self.cluster.worker_env.python), str(self.template_main)]
            args = [f"--{name}={value}" for name, value in params.items()]
        else:  # not a Flex Template job: its own command line
            command = [str(self.cluster.worker_env.python), "-m", f"pipelines.{job}"]
            args = job_argv(job, params)
        log = workdir / "launcher.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            done = subprocess.run(
                command + args + self.cluster.pipeline_args(),
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
        launched = time.monotonic()
        if done.returncode != 0:
            raise ClusterError(f"{label}: the launcher exited {done.returncode}:\n{tail(log)}")
        job_id, state = self.cluster.wait_for_new_job()
        if state != "DONE":
            raise ClusterError(
                f"{label}: job {job_id} ended {state}; the workers' last errors:\n"
                f"{worker_errors(self.cluster.run_dir / 'worker-pool.log')}"
            )
        run.launch_seconds = round((run.launch_seconds or 0) + launched - started, 2)
        run.cluster_seconds = round((run.cluster_seconds or 0) + time.monotonic() - started, 2)

    def locally(self, job: str, params: dict, run: JobRun, label: str) -> None:
        """Runs `job` with the local runner (the checkout, the launcher's venv) on the same inputs."""
        args = job_argv(job, params)
        env = {**os.environ, **self.cluster.gcs.env, **self.cluster.metadata.env, "PYTHONPATH": str(REPO)}
        log = self.run_dir / f"local-{label}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            done = subprocess.run(
                [sys.executable, "-m", f"pipelines.{job}", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
        if done.returncode != 0:
            raise ClusterError(f"{label} (local runner) exited {done.returncode}:\n{tail(log)}")
        run.local_seconds = round((run.local_seconds or 0) + time.monotonic() - started, 2)


# ---- the jobs --------------------------------------------------------------------------------------
def stage_demo_inputs(cluster: PortableCluster, server, workdir: pathlib.Path) -> dict:
    """Uploads the demo sample (manifests with the server's address, side files, an ImageNet train
    tree) to gs://; returns the ingest parameters naming them (template parameter names)."""
    from pipelines.demo import sample_site

    bucket = cluster.gcs.bucket(BUCKET)
    files = sample_site.render_templates(server, str(workdir / "sample"))
    gs = {name: upload_tree(bucket, pathlib.Path(path), f"inputs/{name}") for name, path in files.items()}
    root = upload_tree(
        bucket, pathlib.Path(sample_site.write_imagenet_root(str(workdir / "sample"))), "inputs/imagenet/train"
    )
    manifests = {
        "cc3m": "cc3m.tsv",
        "cc12m": "cc12m.tsv",
        "openimages": "openimages.csv",
        "zero": "zero.jsonl",
        "imagenet_captions": "imagenet_captions.json",
    }
    return {
        "manifest": ",".join(f"{kind}={gs[name]}" for kind, name in manifests.items()),
        "cc12m_hashes": gs["cc12m_hashes.tsv"],
        "openimages_labels": ",".join(
            gs[n]
            for n in ("openimages-labels-machine.csv", "openimages-labels-human.csv", "machine_ann_2016_08-labels.csv")
        ),
        "openimages_classes": gs["openimages-class-descriptions.csv"],
        "cc3m_labels": gs["cc3m-labels.tsv"],
        "long_captions": gs["dreamlip-long-captions.csv"],
        "imagenet_root": root,
        "imagenet_synsets": gs["LOC_synset_mapping.txt"],
        "allow_network": "127.0.0.1/32",
        "timeout": str(DEMO_TIMEOUT),
    }


def out_uri(kind: str, job: str) -> str:
    return f"gs://{BUCKET}/{kind}/{job}"


def night_two_routes(server) -> None:
    """What changed on the web between the two nights: a photo gone, one replaced, one back."""
    from pipelines.demo.sample_site import Reply, jpeg

    server.routes["/img/p04.jpg"] = Reply(404, b"gone", {"Content-Type": "text/plain"})
    server.routes["/img/p06.jpg"] = Reply(200, jpeg(99), {"Content-Type": "image/jpeg", "ETag": '"p06-new"'})
    server.routes["/error/500.jpg"] = Reply(200, jpeg(98), {"Content-Type": "image/jpeg"})


def run_all(run_dir: pathlib.Path, jobs=("ingest", "dedup", "refresh", "export"), workers: int = 2) -> dict:
    """The whole check (see the module docstring); returns the report."""
    from pipelines.demo import sample_site

    run_dir.mkdir(parents=True, exist_ok=True)
    quiet_emulator()
    report = {"run_dir": str(run_dir), "workers": workers, "jobs": {}}
    started = time.monotonic()
    worker_env = ensure_worker_env(run_dir)
    report["worker_env"] = {
        "venv": str(worker_env.venv),
        "reused": worker_env.reused,
        "build_seconds": round(worker_env.seconds, 1),
    }
    server = sample_site.SampleWebServer(sample_site.demo_routes(DEMO_TIMEOUT)).start()
    try:
        with PortableCluster(worker_env, run_dir / "cluster", workers=workers) as cluster:
            report["cluster_start_seconds"] = round(time.monotonic() - started - worker_env.seconds, 1)
            mounts = cluster.worker_mounts()
            report["worker_mounts"] = {path: mount_of(mounts, path) for path in ("/tmp", *cluster.hide, "/mnt/env")}
            launcher = Launcher(cluster, run_dir)
            client = cluster.gcs.client()
            inputs = stage_demo_inputs(cluster, server, run_dir)
            runs = {}

            # ingest always runs: the other jobs read its output.
            run = runs["ingest"] = JobRun("ingest")
            server.hits.clear()
            launcher.on_cluster("ingest", dict(inputs, output=out_uri("cluster", "ingest")), run, "ingest")
            server.hits.clear()  # the flaky route answers 503 first again
            launcher.locally("ingest", dict(inputs, output=out_uri("local", "ingest")), run, "ingest")
            run.differences = compare_outputs(
                client, "ingest", out_uri("cluster", "ingest"), out_uri("local", "ingest")
            )
            run.figures = figures(client, out_uri("cluster", "ingest"), ("rows", "counts"))
            run.figures["blobs"] = len(
                [n for n in listing(client, out_uri("cluster", "ingest")) if n.startswith("blobs/")]
            )
            snapshot = out_uri("cluster", "ingest")

            if "dedup" in jobs:
                run = runs["dedup"] = JobRun("dedup")
                params = {"input": snapshot}
                launcher.on_cluster("dedup", dict(params, output=out_uri("cluster", "dedup")), run, "dedup")
                launcher.locally("dedup", dict(params, output=out_uri("local", "dedup")), run, "dedup")
                run.differences = compare_outputs(
                    client, "dedup", out_uri("cluster", "dedup"), out_uri("local", "dedup")
                )
                dedup_files = listing(client, out_uri("cluster", "dedup"))
                run.figures = {
                    "clusters": len(jsonl_records(dedup_files, "duplicates", snapshot)),
                    "rows": len(
                        parquet_rows({n: d for n, d in dedup_files.items() if n.startswith("images/")}, snapshot)
                    ),
                }

            if "refresh" in jobs:
                run = runs["refresh"] = JobRun("refresh")
                base = {"snapshot": snapshot, "allow_network": "127.0.0.1/32", "timeout": str(DEMO_TIMEOUT)}
                for n, night in enumerate(refresh_nights(), 1):
                    if n == 2:
                        night_two_routes(server)
                    for kind, how in (("cluster", launcher.on_cluster), ("local", launcher.locally)):
                        params = dict(
                            base, night=night, history=out_uri(kind, "history"), output=out_uri(kind, f"refresh-{n}")
                        )
                        server.hits.clear()
                        how("refresh", params, run, f"refresh-{n}")
                    run.differences += compare_outputs(
                        client,
                        f"refresh night {n}",
                        out_uri("cluster", f"refresh-{n}"),
                        out_uri("local", f"refresh-{n}"),
                    )
                    run.figures[night] = figures(
                        client,
                        out_uri("cluster", f"refresh-{n}"),
                        ("rows", "previous_night", "newly_dead", "changed", "revived"),
                    )
                run.differences += compare_outputs(
                    client, "refresh history", out_uri("cluster", "history"), out_uri("local", "history")
                )

            if "export" in jobs:
                run = runs["export"] = JobRun("export")
                if importlib.util.find_spec("pipelines.export") is None:
                    run.skipped = "pipelines/export.py does not exist in this checkout"
                else:
                    for fmt in ("webdataset", "hf-parquet"):
                        params = {"input": snapshot, "format": fmt}
                        launcher.on_cluster(
                            "export", dict(params, output=out_uri("cluster", f"export-{fmt}")), run, f"export-{fmt}"
                        )
                        launcher.locally(
                            "export", dict(params, output=out_uri("local", f"export-{fmt}")), run, f"export-{fmt}"
                        )
                        run.differences += compare_export(
                            client, out_uri("cluster", f"export-{fmt}"), out_uri("local", f"export-{fmt}")
                        )
            report["jobs"] = {name: dataclasses.asdict(r) for name, r in runs.items()}
    finally:
        server.stop()
        report["total_seconds"] = round(time.monotonic() - started, 1)
        for path in (run_dir / "cluster-report.json", LAST_REPORT):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2))
    return report


def mount_of(mounts: dict, path: str) -> str:
    """'TYPE at MOUNT POINT' of the deepest mount holding `path`."""
    point = max((p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")), key=len)
    return f"{mounts[point]} at {point}"


def figures(client, uri: str, fields) -> dict:
    """Some fields of an output's summary.json (what the report quotes)."""
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    summary = json.loads(client.bucket(bucket).blob(f"{prefix}/summary.json").download_as_bytes())
    return {field: summary.get(field) for field in fields}


def compare_export(client, cluster_uri: str, local_uri: str) -> list:
    """Export shards hold the same samples (tar members by name and bytes, Parquet rows)."""
    import tarfile

    differences = compare_outputs(client, "export", cluster_uri, local_uri)
    members = []
    for uri in (cluster_uri, local_uri):
        found = {}
        for name, data in listing(client, uri).items():
            if name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    for member in tar.getmembers():
                        if member.isfile():
                            content = tar.extractfile(member)
                            assert content is not None  # a regular file's member always has its data
                            found[member.name] = content.read()
        members.append(found)
    if members[0] != members[1]:
        differences.append(
            f"export tar members: {len(members[0])} on the cluster, {len(members[1])} locally, "
            f"{sum(members[0].get(k) != v for k, v in members[1].items())} differ"
        )
    return differences


def quiet_emulator() -> None:
    """The emulator warns once per object it serves; its log is not this check's."""
    import logging

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)


def summary_lines(report: dict) -> list[str]:
    """The report in a few lines: per job, launcher / cluster / local seconds and the verdict."""
    env = report.get("worker_env", {})
    lines = [
        f"cluster: worker env {'reused' if env.get('reused') else 'built'} ({env.get('build_seconds')}s incl. "
        f"the package), cluster up in {report.get('cluster_start_seconds')}s, total {report.get('total_seconds')}s"
    ]
    for name, run in report.get("jobs", {}).items():
        if run["skipped"]:
            lines.append(f"  {name}: skipped: {run['skipped']}")
            continue
        verdict = "outputs equal" if not run["differences"] else f"{len(run['differences'])} differences"
        lines.append(
            f"  {name}: launcher {run['launch_seconds']}s, on the cluster {run['cluster_seconds']}s, "
            f"local runner {run['local_seconds']}s: {verdict}"
        )
        lines += [f"    {d}" for d in run["differences"]]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print-report", metavar="JSON", help="print the summary of a saved report and exit")
    parser.add_argument("--run-dir", help="where logs and the run's package go (default: a new temporary folder)")
    parser.add_argument(
        "--jobs",
        default="ingest,dedup,refresh,export",
        help="the jobs to check (ingest always runs: the others read its output)",
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.print_report:
        if os.path.exists(args.print_report):
            print("\n".join(summary_lines(json.loads(pathlib.Path(args.print_report).read_text()))))
        return 0
    run_dir = pathlib.Path(args.run_dir or tempfile.mkdtemp(prefix="cluster-check-"))
    try:
        report = run_all(run_dir, tuple(args.jobs.split(",")), args.workers)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    print("\n".join(summary_lines(report)))
    return 1 if any(j["differences"] for j in report["jobs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
