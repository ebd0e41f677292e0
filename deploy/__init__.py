"""Deployment tooling: Dataflow defaults, Flex Template metadata, offline job-spec rendering (docs/dataflow.md)."""

__all__ = ["jobs", "offline", "render_spec", "wheel_requirements"]
