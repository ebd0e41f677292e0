# One image, two roles: the Beam SDK worker image of the Dataflow jobs, and the Flex Template
# launcher that builds and submits them (the launcher's python uses the very packages the workers
# run). deploy/build_image.sh builds one tag per job: `--build-arg JOB=ingest` (refresh, export); the
# tags share every layer and differ only in BEAM_JOB, the job the launcher runs.
# Static checks of this file: tests/test_dockerfile.py. Sizing and use: docs/dataflow.md.

# The Beam version must be setup.py's BEAM_VERSION: the worker boot program below and the SDK
# installed from setup.py speak one protocol version.
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11
# "latest" is the launcher release Google recommends; pin a dated tag (YYYYMMDD_RC00) to rebuild
# byte for byte.
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk
FROM ${LAUNCHER_IMAGE} AS launcher

# Build stage: the only one with compilers (some dependencies ship only as sources, crcmod's C
# extension speeds up GCS checksums). Installs go to prefixes that are copied into the slim image.
FROM python:${PYTHON_VERSION}-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY deploy/wheel_requirements.py /usr/local/bin/
# Third-party dependencies, from setup.py alone: this layer changes only with the requirements.
COPY setup.py ./
RUN pip wheel --no-deps --wheel-dir /tmp/meta . \
 && python /usr/local/bin/wheel_requirements.py /tmp/meta/*.whl > /tmp/requirements.txt \
 && pip install --ignore-installed --prefix=/deps -r /tmp/requirements.txt
# The package itself: a small layer per code change.
COPY pipelines pipelines
COPY transforms transforms
RUN pip install --no-deps --prefix=/pkg .

FROM python:${PYTHON_VERSION}-slim-bookworm
# Worker entrypoint (Beam's SDK harness boot program) and the Flex Template launcher binary.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
COPY --from=build /deps /usr/local
COPY --from=build /pkg /usr/local
COPY deploy/flex_main.py /template/main.py
# The dependency set must be consistent: a conflict fails the build here, not a job at 3 a.m.
RUN pip check
# No FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE or _SETUP_FILE: everything is installed already, so the
# launcher installs nothing at launch and runs the same code as the workers.
ARG JOB=ingest
ENV BEAM_JOB=${JOB} \
    FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py
# Workers start the SDK harness through the entrypoint; the Flex Template service starts
# /opt/google/dataflow/python_template_launcher itself.
ENTRYPOINT ["/opt/apache/beam/boot"]
