"""Static checks of the Dockerfile (no Docker engine runs here, so it is read, not built)."""

import fnmatch
import json
import pathlib
import re
import shlex

import pytest

from tests.paths import REPO

ROOT = pathlib.Path(REPO)
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|apk|yum|dnf|gcc|g\+\+|clang|make|build-essential|git)\b")


def instructions(text):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or not line:
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    return [(op.upper(), args.strip()) for op, _, args in (item.partition(" ") for item in logical)]


class Dockerfile:
    def __init__(self, path):
        self.instructions = instructions(path.read_text())
        self.global_args = {}
        self.stages = []  # [{"from": image, "name": alias, "ops": [(op, args)]}]
        for op, args in self.instructions:
            if op == "FROM":
                image, _, alias = args.partition(" AS ") if " AS " in args else args.partition(" as ")
                self.stages.append({"from": self.resolve(image.strip()), "name": alias.strip(), "ops": []})
            elif not self.stages and op == "ARG":
                name, _, default = args.partition("=")
                self.global_args[name] = default
            else:
                self.stages[-1]["ops"].append((op, args))

    def resolve(self, text):
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args[m.group(1)], text)

    def stage(self, name):
        return next(s for s in self.stages if s["name"] == name)

    @property
    def final(self):
        return self.stages[-1]

    def ops(self, stage, op):
        return [args for o, args in stage["ops"] if o == op]


@pytest.fixture(scope="module")
def dockerfile():
    return Dockerfile(ROOT / "Dockerfile")


def setup_beam_version():
    return re.search(r'^BEAM_VERSION = "([^"]+)"', (ROOT / "setup.py").read_text(), re.M).group(1)


def test_beam_sdk_image_has_the_version_setup_py_installs(dockerfile):
    python = dockerfile.global_args["PYTHON_VERSION"]
    assert dockerfile.global_args["BEAM_VERSION"] == setup_beam_version()
    assert dockerfile.stage("beam_sdk")["from"] == f"apache/beam_python{python}_sdk:{setup_beam_version()}"
    # The launcher and both Python images are of the same Python as the Beam SDK image.
    assert f"python{python.replace('.', '')}-template-launcher-base" in dockerfile.stage("launcher")["from"]
    assert dockerfile.stage("build")["from"] == f"python:{python}-bookworm"
    assert dockerfile.final["from"] == f"python:{python}-slim-bookworm"


def test_final_image_is_sdk_worker_and_flex_launcher(dockerfile):
    copies = dockerfile.ops(dockerfile.final, "COPY")
    assert "--from=beam_sdk /opt/apache/beam /opt/apache/beam" in copies
    assert (
        "--from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher"
    ) in copies
    (entrypoint,) = dockerfile.ops(dockerfile.final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/apache/beam/boot"]


def test_flex_template_runs_the_jobs_entry_point(dockerfile):
    env = " ".join(dockerfile.ops(dockerfile.final, "ENV"))
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py" in env
    assert "deploy/flex_main.py /template/main.py" in dockerfile.ops(dockerfile.final, "COPY")
    assert "BEAM_JOB=${JOB}" in env and "JOB=ingest" in dockerfile.ops(dockerfile.final, "ARG")
    # Everything is preinstalled: nothing for the launcher to pip-install at launch.
    assert "REQUIREMENTS_FILE" not in env and "SETUP_FILE" not in env


def test_package_and_dependencies_installed_and_checked(dockerfile):
    build_runs = " ".join(dockerfile.ops(dockerfile.stage("build"), "RUN"))
    assert "wheel_requirements.py" in build_runs and "--prefix=/deps -r" in build_runs
    assert "pip install --no-deps --prefix=/pkg ." in build_runs
    build_env = " ".join(dockerfile.ops(dockerfile.stage("build"), "ENV"))
    assert "PIP_NO_CACHE_DIR=1" in build_env  # no pip cache in the layers copied out
    copies = dockerfile.ops(dockerfile.final, "COPY")
    assert "--from=build /deps /usr/local" in copies and "--from=build /pkg /usr/local" in copies
    assert dockerfile.ops(dockerfile.final, "RUN") == ["pip check"]


def test_dependency_layer_comes_before_the_code(dockerfile):
    ops = dockerfile.stage("build")["ops"]
    position = {args: i for i, (op, args) in enumerate(ops)}
    deps = next(i for i, (op, args) in enumerate(ops) if op == "RUN" and "--prefix=/deps" in args)
    assert position["setup.py ./"] < deps < position["pipelines pipelines"] < position["transforms transforms"]


def test_no_build_tools_in_the_final_image(dockerfile):
    final = dockerfile.final
    assert "-slim" in final["from"]
    for args in dockerfile.ops(final, "RUN"):
        assert not BUILD_TOOLS.search(args), args
    # Only prefixes of installed files come from the build stage, never its toolchain.
    for args in dockerfile.ops(final, "COPY"):
        if args.startswith("--from=build"):
            assert shlex.split(args)[1] in ("/deps", "/pkg"), args


def test_build_context_holds_what_the_dockerfile_copies(dockerfile):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path):
        verdict = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!")
            parts = pathlib.PurePath(path).parts
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if any(fnmatch.fnmatch(p, bare) for p in prefixes):
                verdict = negate
        return verdict

    sources = [
        shlex.split(args)[0]
        for stage in dockerfile.stages
        for args in dockerfile.ops(stage, "COPY")
        if not args.startswith("--from")
    ]
    assert sources
    for source in sources:
        files = (
            [p.relative_to(ROOT) for p in (ROOT / source).rglob("*.py")]
            if (ROOT / source).is_dir()
            else [pathlib.Path(source)]
        )
        assert files and all(included(str(f)) for f in files), source
    assert not included(".venv/bin/python") and not included("deploy/build/ingest.json")
