"""Reading the inputs and writing the outputs of a run.

- `file_matches`: which files a path or glob names, each once; `MatchFiles`, `path_identity`.
- `readers`: local, gs:// and .gz files as streams; `OpenFiles`, `ReadLines`, `ParseFiles`.
- `manifests`, `json_manifests`: one streaming parser per manifest format; `ReadManifests`.
- `labels`, `checksums`: dataset side files joined onto rows before the fetch.
- `resume`: which rows of a previous run are carried and which fetched again.
- `sinks`: content-addressed blobs, status counts, summary.json, path and JSON helpers.
- `table`: the two-phase OUT/images Parquet write and the retirement of the previous table.
"""

__all__ = [
    "books",
    "checksums",
    "file_matches",
    "json_manifests",
    "labels",
    "lease",
    "manifests",
    "readers",
    "resume",
    "sinks",
    "table",
]
