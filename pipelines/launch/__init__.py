"""Starting jobs: `job_runner` (what every job shares) and `flex_template` (the Dataflow Flex Template entry)."""

__all__ = ["flex_template", "job_runner"]
