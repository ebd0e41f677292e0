"""The workers' Python environment, built the way the Dockerfile's build stage builds the image.

The Dockerfile (build stage) runs, from a context holding setup.py alone:

    pip wheel --no-deps --wheel-dir /tmp/meta .
    python wheel_requirements.py /tmp/meta/*.whl > /tmp/requirements.txt
    pip install --ignore-installed --prefix=/deps -r /tmp/requirements.txt

then, with pipelines/ and transforms/ copied in, `pip install --no-deps --prefix=/pkg .`, and the
final image runs `pip check` over both prefixes. Here the same commands run with two differences,
both for offline repeatability: the requirements are first built into a wheelhouse (`pip wheel`)
and installed from it with `--no-index`; and the dependency prefix is a virtual environment of
the same Python minor version (the image's /usr/local), cached under deploy/build/cluster/ keyed by
a hash of setup.py, deploy/wheel_requirements.py and the Dockerfile's build commands. The package
itself is built and installed (non-editable) into a fresh prefix on every run: it is small.

    python -m deploy.cluster.worker_env          # builds (or reuses) the environment; prints its path
"""

import dataclasses
import glob
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE_DIR = pathlib.Path(os.environ.get("CLUSTER_CACHE", REPO / "deploy" / "build" / "cluster"))
# What the image's build context holds (.dockerignore): the package's sources and two deploy files.
CONTEXT_FILES = ("setup.py", "pipelines", "transforms", "deploy/flex_main.py", "deploy/wheel_requirements.py")
# The Dockerfile's build stage as this module reproduces it (ensure_worker_env refuses to run if the
# Dockerfile says something else: carry the change over here first).
DOCKERFILE_BUILD_STAGE = (
    "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    "COPY deploy/wheel_requirements.py /usr/local/bin/",
    "COPY setup.py ./",
    "RUN pip wheel --no-deps --wheel-dir /tmp/meta .  && python /usr/local/bin/wheel_requirements.py /tmp/meta/*.whl"
    " > /tmp/requirements.txt  && pip install --ignore-installed --prefix=/deps -r /tmp/requirements.txt",
    "COPY pipelines pipelines",
    "COPY transforms transforms",
    "RUN pip install --no-deps --prefix=/pkg .",
)
BUILD_TOOLS = (
    "setuptools",
    "wheel",
)  # pip builds the package in an isolated env: offline, they come from the wheelhouse


@dataclasses.dataclass(frozen=True)
class WorkerEnv:
    """A built environment: `venv` holds the dependencies (the image's /deps), `pkg` the package (/pkg)."""

    venv: pathlib.Path
    pkg: pathlib.Path
    seconds: float  # time spent building in this call (0 when fully reused)
    reused: bool  # the dependency environment came from the cache

    @property
    def python(self) -> pathlib.Path:
        return self.venv / "bin" / "python"

    @property
    def pkg_site(self) -> pathlib.Path:
        """The package prefix's site-packages (on PYTHONPATH, as /pkg is copied over /usr/local)."""
        found = glob.glob(str(self.pkg / "lib" / "python3*" / "site-packages"))
        return pathlib.Path(found[0])


def dockerfile_build_commands(dockerfile: pathlib.Path | None = None) -> list[str]:
    """The RUN and COPY instructions of the Dockerfile's build stage, continuation lines joined.

    Args:
        dockerfile: the Dockerfile (default: the repository's).
    Returns:
        The instructions, in order, from `FROM ... AS build` to the next FROM.
    """
    text = re.sub(r"\\\n\s*", " ", (dockerfile or REPO / "Dockerfile").read_text())
    commands, in_build = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            in_build = line.endswith(" AS build")
        elif in_build and line.startswith(("RUN ", "COPY ", "ENV ")):
            commands.append(line)
    return commands


def cache_key() -> str:
    """Hash of what decides the dependency environment: setup.py, wheel_requirements.py, the build
    commands and the Python minor version."""
    digest = hashlib.sha256()
    for path in ("setup.py", "deploy/wheel_requirements.py"):
        digest.update((REPO / path).read_bytes())
    digest.update("\n".join(dockerfile_build_commands()).encode())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()[:16]


def base_python() -> str:
    """The interpreter the environment is made from: this one's base (not a venv's)."""
    return os.path.join(sys.base_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")


def _run(args, log, **kwargs):
    log.write(f"$ {' '.join(map(str, args))}\n")
    log.flush()
    subprocess.run([str(a) for a in args], check=True, stdout=log, stderr=subprocess.STDOUT, **kwargs)


def copy_context(dest: pathlib.Path, names=CONTEXT_FILES) -> pathlib.Path:
    """Copies the image's build context (the files .dockerignore lets in) to `dest`.

    Args:
        dest: an empty or missing folder.
        names: the context entries to copy.
    Returns:
        dest.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in names:
        src, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=ignore)
        else:
            shutil.copy2(src, target)
    return dest


def build_dependencies(root: pathlib.Path, log) -> pathlib.Path:
    """The Dockerfile's dependency layer, into root/venv from a wheelhouse root/wheelhouse.

    Args:
        root: the cache entry folder (created).
        log: a text file receiving the commands and their output.
    Returns:
        The virtual environment's path.
    """
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    meta_ctx = copy_context(work / "meta-context", ("setup.py",))  # the layer sees setup.py alone
    venv, wheelhouse, meta = root / "venv", root / "wheelhouse", work / "meta"
    _run([base_python(), "-m", "venv", venv], log)
    pip = [venv / "bin" / "python", "-m", "pip"]
    _run(pip + ["wheel", "--no-deps", "--wheel-dir", meta, "."], log, cwd=meta_ctx)
    requirements = work / "requirements.txt"
    with open(requirements, "w") as out:
        subprocess.run(
            [venv / "bin" / "python", REPO / "deploy" / "wheel_requirements.py", *glob.glob(str(meta / "*.whl"))],
            check=True,
            stdout=out,
        )
    _run(pip + ["wheel", "--wheel-dir", wheelhouse, "-r", requirements, *BUILD_TOOLS], log)
    _run(
        pip
        + [
            "install",
            "--no-index",
            "--find-links",
            wheelhouse,
            "--ignore-installed",
            "--prefix",
            venv,
            "-r",
            requirements,
        ],
        log,
    )
    return venv


def build_package(venv: pathlib.Path, wheelhouse: pathlib.Path, run_dir: pathlib.Path, log) -> pathlib.Path:
    """The Dockerfile's package layer: `pip install --no-deps --prefix=<run_dir>/pkg .` from a copy
    of the build context, non-editable, offline; then `pip check` over both prefixes.

    Args:
        venv: the dependency environment.
        wheelhouse: where pip finds setuptools and wheel to build the package.
        run_dir: this run's folder; gets context/ and pkg/.
        log: a text file receiving the commands and their output.
    Returns:
        The package prefix.
    """
    context = copy_context(run_dir / "context")
    pkg = run_dir / "pkg"
    pip = [venv / "bin" / "python", "-m", "pip"]
    _run(
        pip + ["install", "--no-index", "--find-links", wheelhouse, "--no-deps", "--prefix", pkg, "."], log, cwd=context
    )
    site = glob.glob(str(pkg / "lib" / "python3*" / "site-packages"))[0]
    _run(pip + ["check"], log, env=dict(os.environ, PYTHONPATH=site), cwd="/")
    return pkg


def ensure_worker_env(run_dir: pathlib.Path, log_path: pathlib.Path | None = None) -> WorkerEnv:
    """The cached dependency environment (built on first use) plus this run's package prefix.

    Args:
        run_dir: this run's folder (gets the package prefix and the build context).
        log_path: where pip's output goes (default run_dir/worker-env.log).
    Returns:
        The WorkerEnv.
    """
    if tuple(dockerfile_build_commands()) != DOCKERFILE_BUILD_STAGE:
        raise RuntimeError(
            "the Dockerfile's build stage changed: reproduce it in deploy/cluster/worker_env.py "
            "(DOCKERFILE_BUILD_STAGE and the build functions) before running the cluster"
        )
    root = CACHE_DIR / f"worker-env-{cache_key()}"
    done = root / ".complete"
    log_path = log_path or run_dir / "worker-env.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "a") as log:
        reused = done.exists()
        if not reused:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            build_dependencies(root, log)
            done.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
        pkg = build_package(root / "venv", root / "wheelhouse", run_dir, log)
    return WorkerEnv(venv=root / "venv", pkg=pkg, seconds=time.monotonic() - started, reused=reused)


if __name__ == "__main__":
    import tempfile

    env = ensure_worker_env(pathlib.Path(tempfile.mkdtemp(prefix="worker-env-")))
    print(f"{env.venv} (package: {env.pkg}; {'reused' if env.reused else 'built'} in {env.seconds:.1f}s)")
