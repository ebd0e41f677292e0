# Dataflow targets (docs/dataflow.md). Included by the Makefile, after $(PY) and $(STAMP).
# Offline: dataflow-spec, dataflow-metadata. The others call gcloud on PROJECT (deploy/env.sh names
# everything; override with PROJECT=... BUCKET=... TAG=... JOB=... on the command line).
.PHONY: dataflow-spec dataflow-metadata dataflow-bootstrap dataflow-image dataflow-template \
        dataflow-launch dataflow-schedule

JOB ?= ingest
PARAMS ?=
DEPLOY_ENV = PY=$(abspath $(PY))

# The real Dataflow job spec of every job, rendered offline: deploy/build/<job>.json (+ .pipeline.pb).
dataflow-spec: $(STAMP)
	NO_GCE_CHECK=true $(PY) -m deploy.render_spec --out deploy/build

# Regenerate the committed Flex Template metadata after changing a job's options.
dataflow-metadata: $(STAMP)
	for job in $$($(PY) -m deploy jobs); do $(PY) -m deploy metadata $$job --write; done

# One-time project set-up: APIs, bucket, repository, service accounts and roles.
dataflow-bootstrap:
	bash deploy/bootstrap.sh

# Build and push the image of every job (Cloud Build when no Docker engine runs here).
dataflow-image: $(STAMP)
	$(DEPLOY_ENV) bash deploy/build_image.sh

# Upload every job's Flex Template spec to gs://BUCKET/templates/.
dataflow-template: $(STAMP)
	$(DEPLOY_ENV) bash deploy/build_template.sh

# Launch JOB now:  make dataflow-launch JOB=ingest PARAMS="manifest=cc3m=gs://B/cc3m.tsv output=gs://B/out"
dataflow-launch: $(STAMP)
	$(DEPLOY_ENV) bash deploy/launch.sh $(JOB) $(PARAMS)

# Launch JOB every night with Cloud Scheduler (SCHEDULE="0 2 * * *" by default).
dataflow-schedule: $(STAMP)
	$(DEPLOY_ENV) bash deploy/schedule.sh $(JOB) $(PARAMS)
