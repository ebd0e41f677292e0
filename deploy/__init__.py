"""Deployment tooling: Dataflow defaults, Flex Template metadata, offline job-spec rendering."""
