"""A Dataflow-like cluster on this machine: GCS emulator, Beam's job service, external workers.

What runs where, and what they share:
- the GCS emulator and a metadata-server stub (credentials), on loopback, in this process;
- Beam's portable job service (`local_job_service_main`), the "Dataflow service": it receives each
  job through the Job API from `--runner=PortableRunner` and runs its graph on the workers;
- an external worker pool (`worker_pool_main`, `--environment_type=EXTERNAL`) started from `/` in
  its own mount namespace (`unshare -m`): private tmpfs on /tmp, the checkout, the launcher's
  working folder and the launcher's venv hidden; its Python is the worker environment built like
  the image (worker_env.py), bind-mounted at /mnt/env, the package prefix at /mnt/pkg; each SDK
  worker it starts runs in a further namespace of its own, with its own /tmp.
  Each stage's bundles are spread over `workers` SDK processes (JOB_SERVICE below), so a file one
  worker writes locally is not there for the other.
So launcher and workers share only gs:// (and loopback sockets: the web server being crawled).
Everything listens on 127.0.0.1, except the worker pool's gRPC server, which Beam binds to [::]
(no option changes it); every connection to it comes from loopback.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

from deploy.cluster.metadata_stub import MetadataStub
from deploy.cluster.worker_env import REPO, WorkerEnv
from deploy.offline import LOOPBACK, GcsEmulator, free_port

TERMINAL = ("DONE", "FAILED", "CANCELLED", "DRAINED", "UPDATED")
# The pool's namespace hides the launcher's files; each worker it starts (with `python` from PATH)
# goes through /mnt/bin/python into a namespace of its own with a /tmp of its own: two workers are
# two machines, and a file one of them writes locally is not there for the other.
NAMESPACE_SCRIPT = r"""
set -e
mount -t tmpfs cluster-scratch /mnt
mkdir -p /mnt/env /mnt/pkg /mnt/bin
mount --bind "$CLUSTER_ENV_DIR" /mnt/env
mount --bind "$CLUSTER_PKG_DIR" /mnt/pkg
mount -t tmpfs pool-tmp /tmp
for dir in $CLUSTER_HIDE; do
  if [ -d "$dir" ]; then mount -t tmpfs hidden "$dir"; fi
done
printf '%s\n' '#!/bin/sh' \
  'exec unshare --mount --propagation private sh -c '"'"'mount -t tmpfs worker-tmp /tmp && cd / && exec /mnt/env/bin/python "$@"'"'"' worker "$@"' \
  > /mnt/bin/python
chmod +x /mnt/bin/python
cd /
PATH="/mnt/bin:$PATH" exec /mnt/env/bin/python -m apache_beam.runners.worker.worker_pool_main --service_port="$CLUSTER_POOL_PORT"
"""  # noqa: E501 (a shell script: its command lines stay whole)


# Beam's job service runs every job on an FnApiRunner made with one worker per environment
# (direct_num_workers is read only by FnApiRunner.run_pipeline, not by run_via_runner_api); this
# wrapper makes it `workers`, so each stage's bundles are spread over that many SDK processes.
JOB_SERVICE = r"""
import sys
from apache_beam.runners.portability import local_job_service_main
from apache_beam.runners.portability.fn_api_runner import fn_runner
workers = int(sys.argv.pop(1))
base_init = fn_runner.FnApiRunner.__init__
def init(self, *args, **kwargs):
    base_init(self, *args, **kwargs)
    self._num_workers = workers
fn_runner.FnApiRunner.__init__ = init
local_job_service_main.run(sys.argv[1:])
"""


class ClusterError(RuntimeError):
    """The cluster could not start, or a job on it did not finish DONE."""


def wait_port(
    port: int, seconds: float, process: subprocess.Popen | None = None, log: pathlib.Path | None = None
) -> None:
    """Waits until something accepts connections on localhost:`port`.

    Args:
        port: the TCP port.
        seconds: how long to wait.
        process: the process that should open it (a ClusterError as soon as it exits).
        log: its log, quoted in the error.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ClusterError(f"exited with {process.returncode} before listening on {port}: {tail(log)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.2)
    raise ClusterError(f"nothing listens on {port} after {seconds:.0f}s: {tail(log)}")


def tail(path: pathlib.Path | None, lines: int = 30) -> str:
    """The last `lines` lines of a log file ('' if there is none)."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PortableCluster:
    """Starts and stops the cluster; gives launchers their environment and Beam options.

    Args:
        worker_env: the workers' environment (worker_env.ensure_worker_env).
        run_dir: this run's folder (logs, job service staging, launcher working folders).
        workers: SDK worker processes per job (at least two).
        hide: folders the workers must not see (default: the checkout, the launcher's venv,
            run_dir).
    """

    def __init__(self, worker_env: WorkerEnv, run_dir: pathlib.Path, workers: int = 2, hide=None):
        if workers < 2:
            raise ValueError("use at least two workers: with one, bugs that read another worker's files hide")
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise ClusterError("the worker pool needs root and unshare(1) for its private mount namespace")
        self.worker_env = worker_env
        self.run_dir = pathlib.Path(run_dir)
        self.workers = workers
        self.hide = tuple(hide) if hide is not None else (str(REPO), os.path.realpath(sys.prefix), str(self.run_dir))
        self.gcs = GcsEmulator()
        self.metadata = MetadataStub(self.gcs.project)
        self.job_port: int | None = None
        self.pool_port: int | None = None
        self._processes: list[subprocess.Popen] = []
        self._seen_jobs: set[str] = set()

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "PortableCluster":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.gcs.start()
        self.metadata.start()
        self.job_port, self.pool_port = free_port(), free_port()
        service_dir = self.run_dir / "job-service"
        service_dir.mkdir(exist_ok=True)
        log = self.run_dir / "job-service.log"
        service = self._spawn(
            [
                str(self.worker_env.python),
                "-c",
                JOB_SERVICE,
                str(self.workers),
                "--port",
                str(self.job_port),
                "--staging_dir",
                str(service_dir / "staging"),
            ],
            log,
            cwd=service_dir,
            env=self.service_env(),
        )
        wait_port(self.job_port, 60, service, log)
        log = self.run_dir / "worker-pool.log"
        pool_env = dict(
            self.service_env(),
            PATH=f"/mnt/env/bin:{os.environ.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=f"/mnt/pkg/{self.worker_env.pkg_site.relative_to(self.worker_env.pkg)}",
            CLUSTER_ENV_DIR=str(self.worker_env.venv),
            CLUSTER_PKG_DIR=str(self.worker_env.pkg),
            CLUSTER_HIDE=" ".join(self.hide),
            CLUSTER_POOL_PORT=str(self.pool_port),
        )
        pool = self._spawn(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT], log, cwd="/", env=pool_env
        )
        wait_port(self.pool_port, 60, pool, log)
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._processes = []
        self.metadata.stop()
        self.gcs.stop()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, args, log_path, cwd, env):
        log = open(log_path, "ab")  # noqa: SIM115  (kept open by the child)
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._processes.append(process)
        return process

    def worker_mounts(self) -> dict:
        """{mount point: filesystem type} as the worker pool (and so every worker) sees them."""
        pool = self._processes[-1]
        mounts = {}
        for line in pathlib.Path(f"/proc/{pool.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            dash = fields.index("-")
            mounts[fields[4]] = fields[dash + 1]  # a later mount over the same point wins
        return mounts

    # ---- what launchers and services get --------------------------------------------------------
    def service_env(self) -> dict:
        """A clean environment for cluster processes: no PYTHONPATH, gs:// to the emulator,
        credentials from the metadata stub."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
        env = {name: os.environ[name] for name in keep if name in os.environ}
        env.update(self.gcs.env)
        env.update(self.metadata.env)
        return env

    def launcher_env(self) -> dict:
        """The environment of a launcher: the image's Python (worker env + package prefix)."""
        return dict(
            self.service_env(),
            PYTHONPATH=str(self.worker_env.pkg_site),
            PATH=f"{self.worker_env.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )

    def pipeline_args(self) -> list[str]:
        """Beam options that send a job here."""
        return [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{self.job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{self.pool_port}",
            f"--project={self.gcs.project}",
        ]

    # ---- jobs -----------------------------------------------------------------------------------
    def _stub(self):
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2_grpc

        return beam_job_api_pb2_grpc.JobServiceStub(grpc.insecure_channel(f"localhost:{self.job_port}"))

    def jobs(self) -> dict:
        """{job id: (job name, state name)} of every job the job service has seen."""
        from apache_beam.portability.api import beam_job_api_pb2

        infos = self._stub().GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30).job_info
        return {info.job_id: (info.job_name, beam_job_api_pb2.JobState.Enum.Name(info.state)) for info in infos}

    def wait_for_new_job(self, seconds: float = 600) -> tuple[str, str]:
        """Waits for the job submitted since the last call to finish.

        Args:
            seconds: how long to wait.
        Returns:
            (job id, final state name).
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            new = {job_id: info for job_id, info in self.jobs().items() if job_id not in self._seen_jobs}
            if len(new) > 1:
                raise ClusterError(f"more than one new job: {sorted(new)}")
            if new:
                ((job_id, (_name, state)),) = new.items()
                if state in TERMINAL:
                    self._seen_jobs.add(job_id)
                    return job_id, state
            time.sleep(0.5)
        raise ClusterError(
            f"no job finished within {seconds:.0f}s; job service: {tail(self.run_dir / 'job-service.log')}"
        )
