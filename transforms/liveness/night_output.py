"""REFRESH_OUT written aside: a night's status/, hosts/ and summary.json go to REFRESH_OUT/_tmp-<run>/
and are put into place only once the night's books balance; the previous night's files are retired
only then. A run that fails (a full disk, books that do not balance, a crash, kill -9, Ctrl-C)
leaves REFRESH_OUT as the previous run left it: the data team deletes rows on these verdicts.

Public surface:

- `RefreshOutput(out, run_id)`: where a run writes aside (`aside(...)`) and its file prefix.
- `PublishOutput(target)`: {"status", "hosts", "summary"} (file paths; the summary's once the books
  balanced), and "night" (the history night, once published, if any) -> REFRESH_OUT/summary.json,
  once the files are in place and the old ones retired.
- `sweep_leftovers(out, history, night)`: what killed runs left aside, removed, and a publish cut
  short settled (under the lease).
- `settle_publish(out)`: REFRESH_OUT's status/ and hosts/ back to the files summary.json's run wrote.
- `remove_run_temporaries(out, history, night, run_id)`: a failed run's own, removed (best effort).
"""

import contextlib
import dataclasses
import datetime
import glob
import os
import re
import shutil

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.errors import EnvironmentFailure
from transforms.io.lease_guard import LeaseGuard, publish_held
from transforms.io.sinks import delete_tree, file_name, join_path, read_json
from transforms.liveness import history

__all__ = [
    "OUTPUT_PARTS",
    "RefreshOutput",
    "publish_output",
    "PublishOutput",
    "sweep_leftovers",
    "settle_publish",
    "remove_run_temporaries",
]

OUTPUT_PARTS = ("status", "hosts")

# Under REFRESH_OUT: runs' aside folders; status/_tmp-* and hosts/_tmp-* of runs that wrote in
# place (before the output was written aside); a summary being written (sinks.write_json) when killed.
_OUT_LEFTOVERS: tuple[str, ...] = ("_tmp-*/**", "status/_tmp-*/**", "hosts/_tmp-*/**", "summary.json.tmp-*")
# Under HISTORY/<night>: runs' aside folders; a marker being written when the run was killed.
_NIGHT_LEFTOVERS: tuple[str, ...] = ("_tmp-*/**", f"{history.COMPLETE_MARKER}.tmp-*")
# A night's file in REFRESH_OUT/status/ or hosts/: RefreshOutput.prefix, then its shard number.
_NIGHT_FILE = re.compile(r"^part-(?P<run>[^/]+)-\d{5}-of-\d{5}\.parquet$")


@dataclasses.dataclass(frozen=True)
class RefreshOutput:
    """One run's REFRESH_OUT: `out` itself, and `aside(...)`, REFRESH_OUT/_tmp-<run>/..., where its
    files wait for the books. `prefix` names its Parquet files: another run's never share a name.
    `guard`: the lease's LeaseGuard, confirmed before each publish step (None: nothing to check)."""

    out: str
    run_id: str
    guard: LeaseGuard | None = None

    def aside(self, *parts: str) -> str:
        return join_path(self.out, f"_tmp-{self.run_id}", *parts)

    @property
    def prefix(self) -> str:
        return f"part-{self.run_id}"


def publish_output(target: RefreshOutput, status: list[str], hosts: list[str], summary: str) -> str:
    """Moves a night written aside into REFRESH_OUT, then retires the previous night's files.

    Order: the Parquet files beside the old ones (run-distinct names), summary.json over the old one
    (the switch: its "written" names the night's status files), then the old files go. Renames
    only: a full disk cannot stop it half-way. A retried step finds the files moved already.

    Args:
        target: the run's REFRESH_OUT.
        status: the status files, in target.aside("status").
        hosts: the host files, in target.aside("hosts").
        summary: the summary written aside, once the books balanced.
    Returns:
        REFRESH_OUT/summary.json.
    Raises:
        EnvironmentFailure: the summary in place does not name this run's files (nothing is
            retired), or the old files could not be removed.
    """
    names = {}
    for part, files in (("status", status), ("hosts", hosts)):
        names[part] = sorted(file_name(f) for f in files)
        if "://" not in target.out:  # a local rename needs the folder; object stores have none
            os.makedirs(join_path(target.out, part), exist_ok=True)
    # why: taken over, this run's files go (aside and any moved already); the holder's stay
    mine = [join_path(target.out, part, name) for part in OUTPUT_PARTS for name in names[part]]
    mine.append(target.aside() + "/")
    for part in OUTPUT_PARTS:
        for name in names[part]:
            publish_held(target.guard, target.aside(part, name), join_path(target.out, part, name), mine)
    final = join_path(target.out, "summary.json")
    publish_held(target.guard, summary, final, mine)
    # Why: on a retry, an existing summary.json is taken for this run's; retire only if it is.
    if read_json(final).get("written") != names["status"]:
        raise EnvironmentFailure(f"{final} does not name the status files this run wrote: another run wrote there")
    if target.guard is not None:
        target.guard.confirm()  # why: the previous night's files may be the new holder's now
    for part in OUTPUT_PARTS:
        history.retire_unlisted(join_path(target.out, part), set(names[part]))
    return final


class PublishOutput(beam.PTransform):
    """{"status", "hosts": file paths, "summary": the summary's path} -> REFRESH_OUT/summary.json,
    once the night is in place (publish_output). Gate "summary" on the books: a run whose books do
    not balance never gets here, and REFRESH_OUT keeps the previous night."""

    def __init__(self, target: RefreshOutput) -> None:
        super().__init__()
        self._target = target

    def expand(self, inputs):
        target = self._target
        # Why after the history night (when there is one): a run cut between the two publishes
        # then leaves REFRESH_OUT on the previous night, never ahead of the history the next
        # night's streaks are counted from.
        gate = {"night": beam.pvalue.AsList(inputs["night"])} if "night" in inputs else {}
        return inputs["summary"] | "Publish" >> beam.Map(
            lambda summary, status, hosts, night=(): publish_output(target, status, hosts, summary),
            status=beam.pvalue.AsList(inputs["status"]),
            hosts=beam.pvalue.AsList(inputs["hosts"]),
            **gate,
        )


def sweep_leftovers(out: str, history_dir: str | None, night: datetime.date) -> None:
    """Removes what killed runs left aside in REFRESH_OUT and in tonight's history night, then
    settles a publish cut short (settle_publish: only files of a run summary.json does not name
    leave status/ and hosts/; the night in place is not touched). Call it holding REFRESH_OUT's
    lease, before the run writes.

    Args:
        out: REFRESH_OUT.
        history_dir: the --history directory, or None.
        night: tonight.
    Raises:
        EnvironmentFailure: a listing or a delete failed, or a file is still there.
    """
    places = [(out, _OUT_LEFTOVERS)]
    if history_dir:
        places.append((history.night_dir(history_dir, night), _NIGHT_LEFTOVERS))
    for directory, patterns in places:
        for pattern in patterns:
            history.delete_matching(join_path(directory, pattern))
        if "://" not in directory:  # local folders stay behind once empty; object stores have none
            for folder in glob.glob(os.path.join(directory, "_tmp-*")) + glob.glob(
                os.path.join(directory, "*", "_tmp-*")
            ):
                shutil.rmtree(folder, ignore_errors=True)
    settle_publish(out)


def settle_publish(out: str) -> None:
    """Removes from REFRESH_OUT/status/ and hosts/ the files of any run but the one summary.json
    names: what a run killed during publish_output (between its first move and the retirement of
    the previous night's files) leaves beside the night in place. Until then a reader globbing
    status/*.parquet reads both nights' rows; after it, one row per URL again.

    Nothing is removed unless summary.json is readable and its "written" names only files of one
    run (part-<run>-NNNNN-of-MMMMM.parquet): without a summary to go by, the files stay as found.

    Args:
        out: REFRESH_OUT.
    Raises:
        EnvironmentFailure: a delete failed (a folder that cannot be listed is left as found).
    """
    try:
        written = read_json(join_path(out, "summary.json")).get("written")
    except Exception:  # no summary (a first run), or one this run will replace: nothing to go by
        return
    names = written if isinstance(written, list) else []
    matches = [_NIGHT_FILE.match(name) if isinstance(name, str) else None for name in names]
    runs = {m.group("run") for m in matches if m}
    if not matches or not all(matches) or len(runs) != 1:
        return
    prefix = RefreshOutput(out, runs.pop()).prefix + "-"
    for part in OUTPUT_PARTS:
        directory = join_path(out, part)
        try:
            present = [file_name(m.path) for m in FileSystems.match([join_path(directory, "*")])[0].metadata_list]
        except Exception:  # no such folder: nothing to settle
            continue
        keep = {name for name in present if name.startswith(prefix)}
        if keep != set(present):
            history.retire_unlisted(directory, keep)


def remove_run_temporaries(out: str, history_dir: str | None, night: datetime.date, run_id: str) -> None:
    """A failed run's files written aside, removed: best effort, the next run sweeps what is left.

    Args:
        out: REFRESH_OUT.
        history_dir: the --history directory, or None.
        night: tonight.
        run_id: the failed run's id.
    """
    folders = [RefreshOutput(out, run_id).aside()]
    if history_dir:
        folders.append(history.night_aside(history_dir, night, run_id))
    for folder in folders:
        with contextlib.suppress(Exception):
            delete_tree(folder)
    if history_dir and "://" not in history_dir:
        with contextlib.suppress(OSError):  # a night this run created, empty again
            os.rmdir(history.night_dir(history_dir, night))
