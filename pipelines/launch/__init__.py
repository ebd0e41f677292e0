"""Starting jobs.

- `job_runner`: what every job shares: `Job` (parse, execute, main), local defaults, the lease.
- `arguments`: the command-line check: each argument is the job's own option or a Beam option.
- `preflight`: checks of input paths and Parquet footers before a pipeline starts.
- `output_checks`: checks of the output folder before anything is written.
- `scratch`: local scratch directories (the on-disk shuffle's), removed however a run ends.
- `failures`: any failure -> one line and an exit status.
- `console`: one-line logs, quiet worker processes, Ctrl-C; `early_interrupt`: Ctrl-C while importing.
- `flex_template`: the Dataflow Flex Template entry (template parameters -> a job's command line).
"""

__all__ = [
    "arguments",
    "console",
    "early_interrupt",
    "failures",
    "flex_template",
    "job_runner",
    "output_checks",
    "preflight",
    "scratch",
]
