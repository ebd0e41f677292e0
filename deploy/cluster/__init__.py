"""A Dataflow-like cluster on one machine, offline (docs/dataflow.md, "The cluster test").

worker_env.py builds the workers' Python environment the way the Dockerfile's build stage builds
the image; metadata_stub.py answers credentials on loopback; portable_cluster.py starts the GCS
emulator, Beam's job service and an external worker pool in a private mount namespace;
cluster_check.py submits every job there through the Flex Template entry point and compares the
outputs with the local runner's.
"""
