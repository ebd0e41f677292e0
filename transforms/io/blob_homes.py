"""Where an ingest output's blobs are now: its own blobs/ folder, whatever its rows say.

An ingest writes each `ok` row's `blob` as the URI of OUT/blobs/ab/cd/<sha256>.<ext> where OUT was
written: an OUT moved or copied since (`mv`, `cp -r`, `gsutil cp -r` to another bucket) keeps the
old place in its rows, and versions before 2026-12-02 wrote it relative to the working directory
of the ingest (`OUT/blobs/...` for `--output OUT`). The export of that OUT finds such blobs under its
own blobs/, but the dedup job copied the rows as they were into OUT3, which has no blobs/ of its
own: the export of OUT3 then found none (19 rows, 0 exported, 12 `unreadable_blob`, exit 0). So the
dedup job re-points the blobs of an ingest output's rows to that output's blobs/ (`rooted_blobs`);
a dedup output's rows keep theirs (they name the blobs of the ingest outputs it was made from).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from transforms.io.sinks import absolute_uri, join_path

__all__ = ["blob_homes", "rooted_blobs"]

# why the last three parts only: blob_uri's layout (blobs/ab/cd/<name>) in every version; the name
# is kept as written (an older version's extension included)
_BLOB_TAIL = r"^(?:.*/)?blobs/([0-9a-f]{2}/[0-9a-f]{2}/[^/]+)$"


def blob_homes(inputs: Sequence[str], tables: Sequence[tuple[list[str], dict]] | None) -> dict[int, str]:
    """The inputs whose blobs are in their own blobs/ folder: the ingest outputs.

    Args:
        inputs: the --input values, in order.
        tables: table_record.checked_table's (files, which table) per input; None: none known.
    Returns:
        {input index: the input, absolute (local) or as given (gs://)} for each input written by an
        ingest, or with no writer recorded (summary.json deleted) and a local blobs/ folder.
    """
    homes = {}
    for index, (root, (_files, table)) in enumerate(zip(inputs, tables or [], strict=False)):
        writer = table.get("written_by")
        if writer == "ingest" or (writer is None and "://" not in root and os.path.isdir(join_path(root, "blobs"))):
            homes[index] = absolute_uri(root)
    return homes


def rooted_blobs(blobs: pa.Array | pa.ChunkedArray, root: str) -> pa.Array | pa.ChunkedArray:
    """`blobs` (the blob column of an ingest output's rows) re-pointed to ROOT/blobs/ab/cd/<name>.

    Args:
        blobs: blob URIs as the rows hold them (null for rows without bytes).
        root: the ingest output where the rows were read (blob_homes).
    Returns:
        The same column with each blob under ROOT/blobs/; nulls and values of no blob layout as they were.
    """
    prefix = join_path(root, "blobs").replace("\\", "\\\\") + "/"
    return pc.replace_substring_regex(blobs, pattern=_BLOB_TAIL, replacement=prefix + r"\1")
