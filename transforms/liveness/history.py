"""The refresh history: one directory per night, HISTORY/<YYYY-MM-DD>/part-*.parquet + _COMPLETE.
A night reads the latest complete night before it and writes only its own directory.
"""

import datetime
import json
import time
import uuid
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput, EnvironmentFailure
from transforms.io.checked_parquet import DamagedTable, ReadTableRecords
from transforms.io.sinks import delete_tree, file_name, join_path, publish_file, read_json, write_json
from transforms.liveness.checks import WriteStatusTable

__all__ = [
    "HISTORY_COLUMNS",
    "STREAK_COLUMNS",
    "COMPLETE_MARKER",
    "night_dir",
    "complete_nights",
    "night_files",
    "previous_night",
    "night_aside",
    "publish_night",
    "retire_unlisted",
    "delete_matching",
    "ReadHistory",
    "WriteHistory",
]


HISTORY_COLUMNS = ["key", "url", "night", "status", "consecutive_failures", "previous_nights", "dead_since"]
# Read when every file of the night has them: a history written before they existed is still read
# (verdicts.streak_after then counts the night's own failure kind as the streak's only evidence).
STREAK_COLUMNS = ["failure", "gone_failures", "evidence_failures"]
COMPLETE_MARKER = "_COMPLETE"


def night_dir(history, night):
    return join_path(history, night.isoformat())


def night_aside(history: str, night: datetime.date, run_id: str) -> str:
    """HISTORY/<night>/_tmp-<run>: where a run writes its night until the books balance.

    Why inside the night: a rename needs the same filesystem, and the history may be on another
    than REFRESH_OUT. Readers never see it: the night is read from the files its _COMPLETE marker
    lists, and pyarrow skips "_" folders. A killed run's folder is removed by the next run of the night.

    Args:
        history: the --history directory.
        night: the night being written.
        run_id: this run's id.
    Returns:
        the folder's path.
    """
    return join_path(night_dir(history, night), f"_tmp-{run_id}")


def complete_nights(history: str) -> list[datetime.date]:
    """Nights of the history whose write finished (their _COMPLETE marker exists), oldest first.

    Args:
        history: the --history directory.
    Returns:
        the complete nights; [] when the history has none yet (the first night).
    Raises:
        EnvironmentFailure: the history could not be listed. Taking that as "no history" would
            restart every failure streak and dead_since, and tonight's write would make it permanent.
    """
    pattern = join_path(history, "*", COMPLETE_MARKER)
    try:
        found = FileSystems.match([pattern])[0].metadata_list  # a missing directory matches nothing
    except Exception as exc:
        raise EnvironmentFailure(f"cannot list the history {history} ({pattern}): {_short(exc)}") from None
    nights = []
    for meta in found:
        name = meta.path.rstrip("/").split("/")[-2]
        try:
            nights.append(datetime.date.fromisoformat(name))
        except ValueError:
            continue
    return sorted(set(nights))


def previous_night(history: str, night: datetime.date) -> datetime.date | None:
    """The latest complete night strictly before `night`, or None: a re-run of a night reads what
    the first run read, whatever nights were written since.

    Args:
        history: the --history directory (None or "": no history).
        night: tonight.
    Returns:
        the night to build on, or None on a first night.
    Raises:
        EnvironmentFailure: the history could not be listed.
    """
    earlier = [n for n in complete_nights(history) if n < night] if history else []
    return earlier[-1] if earlier else None


def night_files(history: str, night: datetime.date) -> tuple[list[str], list[str]]:
    """The Parquet files of a complete night, checked before the job starts: the ones its _COMPLETE
    marker lists must all be there and readable, with the history columns.

    A damaged night is the user's to repair (exit 2), as a damaged page of it is when the job reads
    it and as a damaged input table is (docs/integrity.md): retrying cannot help, restoring the
    night or re-running that night's refresh does. Storage that cannot be listed or read is the
    environment (exit 1).

    Args:
        history: the --history directory.
        night: a complete night (complete_nights()).
    Returns:
        (the files' paths, sorted; the columns to read: HISTORY_COLUMNS and the STREAK_COLUMNS
        that every file holds).
    Raises:
        BadInput: the night is damaged: a marker that does not list files, a listed file missing,
            a footer that does not read (DamagedTable), a file without the history columns.
        EnvironmentFailure: the marker or a file cannot be opened or read, the night cannot be listed.
    """
    import pyarrow.parquet as pq

    directory = night_dir(history, night)
    marker = join_path(directory, COMPLETE_MARKER)
    repair = f"restore it, or re-run the refresh of {night.isoformat()}"
    try:
        with FileSystems.open(marker) as handle:
            raw = handle.read()
    except Exception as exc:
        raise EnvironmentFailure(f"cannot read the history marker {marker}: {_short(exc)}") from None
    try:
        listed = json.loads(raw.decode("utf-8"))["files"]
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise ValueError("'files' is not a list of file names")
    except Exception as exc:
        raise BadInput(
            f"history night {directory} is damaged: {marker} is not a readable marker ({_short(exc)}); {repair}"
        ) from None
    try:
        present = {
            file_name(m.path): m.path for m in FileSystems.match([join_path(directory, "*.parquet")])[0].metadata_list
        }
    except Exception as exc:
        raise EnvironmentFailure(f"cannot list the history night {directory}: {_short(exc)}") from None
    missing = sorted(set(listed) - set(present))
    if missing:
        raise BadInput(
            f"history night {directory} is damaged: {join_path(directory, missing[0])}"
            f" is listed in {COMPLETE_MARKER} but missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; {repair}"
        )
    paths = sorted(present[name] for name in listed)
    optional = set(STREAK_COLUMNS)
    for path in paths:
        try:
            handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as exc:
            raise EnvironmentFailure(f"cannot read the history file {path}: {_short(exc)}") from None
        with handle:
            try:
                names = set(pq.read_schema(handle).names)
            except Exception as exc:  # noqa: BLE001 (pyarrow has no common base: any footer that fails)
                raise DamagedTable(path, f"unreadable footer: {_short(exc)}") from None
        absent = [c for c in HISTORY_COLUMNS if c not in names]
        if absent:
            raise BadInput(f"the history file {path} has no {', '.join(absent)} column: not a history night; {repair}")
        optional &= names
    return paths, HISTORY_COLUMNS + [c for c in STREAK_COLUMNS if c in optional]


def delete_matching(pattern: str) -> None:
    """Deletes the files matching `pattern` and checks they are gone.

    Args:
        pattern: a FileSystems glob.
    Raises:
        EnvironmentFailure: the listing or a delete failed, or files remain (one line naming them).
    """
    try:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if paths:
            FileSystems.delete(paths)
        left = [m.path for m in FileSystems.match([pattern])[0].metadata_list] if paths else []
    except Exception as exc:
        raise EnvironmentFailure(f"cannot clear {pattern}: {_short(exc)}") from None
    if left:
        raise EnvironmentFailure(
            f"cannot clear {pattern}: {left[0]} is still there"
            + (f" (and {len(left) - 1} more)" if len(left) > 1 else "")
        )


def _short(exc, limit=300):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class ReadHistory(beam.PTransform):
    """(key, history row) of the latest complete night before `night`; nothing without one.

    The history is listed and the night's files checked at construction (in the driver), so a
    storage error fails the job with one line before anything is written (see night_files)."""

    def __init__(self, history, night):
        super().__init__()
        self._history = history
        self._night = night
        self.previous = previous_night(history, night) if history else None
        self._files, self._columns = night_files(history, self.previous) if self.previous else ([], [])

    def expand(self, pbegin):
        if self.previous is None:
            return pbegin | "NoHistory" >> beam.Create([])
        return (
            pbegin
            # why: exactly the files the night's marker lists, not whatever else sits in the
            # folder; pages verified (a damaged page would read as other streaks, other statuses)
            | "ReadNight" >> ReadTableRecords(self._files, self._columns)
            | "ByKey" >> beam.Map(lambda row: (row["key"], row))
        )


def retire_unlisted(directory: str, keep: set[str], spare: Callable[[str], bool] | None = None) -> None:
    """Deletes what `directory` holds besides `keep` (names): an earlier run's files, once this
    run's are in place and named by its summary or marker (night_output.publish_output, publish_night).

    Args:
        directory: the folder.
        keep: the names to keep.
        spare: also keeps a name for which it returns true (publish_night: a run publishing now).
    Raises:
        EnvironmentFailure: the listing or a delete failed (this run's files stay in place).
    """
    try:
        stale = [m.path for m in FileSystems.match([join_path(directory, "*")])[0].metadata_list]
        stale = [path for path in stale if file_name(path) not in keep and not (spare and spare(file_name(path)))]
        if stale:
            FileSystems.delete(stale)
    except Exception as exc:
        raise EnvironmentFailure(
            f"cannot remove an earlier run's files from {directory} ({_short(exc)}); this run's are in"
            " place and named by its summary or marker: rerun to remove them"
        ) from None


ASIDE_MARKER = "marker.json"  # not _COMPLETE: a gs:// match of HISTORY/*/_COMPLETE crosses "/"


def publish_night(history: str, night: datetime.date, run_id: str, files: list[str]) -> list[str]:
    """Puts a night written aside (night_aside) into place; the night stays complete throughout.

    The new files go beside the current ones (run-distinct names: the current marker still lists
    only its own), then the new marker replaces the old one in one rename (the switch), and only
    then are the files no marker lists removed. A run that stops before the switch leaves the old
    night as it was (plus unlisted files, which readers never read); a retried step finds the files
    and the marker moved already.

    Args:
        history: the --history directory.
        night: the night.
        run_id: the run that wrote the night aside.
        files: the night's Parquet files in its aside folder.
    Returns:
        the night's files in their place.
    Raises:
        EnvironmentFailure: the marker in place does not list this run's files (another run moved
            its own there): nothing is removed.
    """
    directory, aside = night_dir(history, night), night_aside(history, night, run_id)
    names = sorted(file_name(f) for f in files)
    marker = join_path(directory, COMPLETE_MARKER)
    replaced = set(_listed_by(marker))
    for name in names:
        publish_file(join_path(aside, name), join_path(directory, name))
    publish_file(join_path(aside, ASIDE_MARKER), marker)
    if read_json(marker).get("files") != names:
        raise EnvironmentFailure(f"{marker} does not list the files this run wrote: another run wrote the night")
    # why spare: another run of this night may be publishing now (a scheduler's retry, a run by hand:
    # no lease covers HISTORY); its files, moved in before its marker, were removed as unlisted and
    # its marker then listed files gone, both runs exit 0 on a damaged night
    publishing = _runs_aside(directory) - {run_id}
    retire_unlisted(
        directory,
        set(names) | {COMPLETE_MARKER},
        spare=lambda name: name not in replaced and _run_of(name) in publishing,
    )
    gone = [name for name in names if not FileSystems.exists(join_path(directory, name))]
    if gone:
        raise EnvironmentFailure(
            f"{join_path(directory, gone[0])} was removed while this run published the night: another run"
            f" of {night.isoformat()} published at once; run the night again"
        )
    delete_tree(aside)
    return [join_path(directory, name) for name in names]


def _listed_by(marker: str) -> list[str]:
    """The files a night's marker lists; none when it has no marker yet (or one that does not read)."""
    try:
        return list(read_json(marker).get("files") or [])
    except Exception:  # noqa: BLE001 (no marker: the night's first run; a damaged one lists nothing)
        return []


PUBLISHING_WITHIN_SECONDS = 6 * 3600  # why: a run's aside marker is written just before it publishes


def _runs_aside(directory: str) -> set[str]:
    """The runs with files written aside lately in a night's folder (HISTORY/<night>/_tmp-<run>/...):
    publishing now, or killed lately. Why lately: a killed run's folder stays where no run of the
    night sweeps it (a launcher that does not wait), and its files moved in must go some day."""
    found = FileSystems.match([join_path(directory, "_tmp-*", "*")])[0].metadata_list
    since = time.time() - PUBLISHING_WITHIN_SECONDS
    return {
        m.path.rstrip("/").split("/")[-2].removeprefix("_tmp-")
        for m in found
        if not m.last_updated_in_seconds or m.last_updated_in_seconds >= since
    }


def _run_of(name: str) -> str:
    """The run id in a night file's name (part-<run>-NNNNN-of-MMMMM.parquet)."""
    return name.split("-")[1] if name.startswith("part-") and name.count("-") >= 2 else ""


class WriteHistory(beam.PTransform):
    """Status rows -> HISTORY/<night>/part-<run>-*.parquet and its _COMPLETE marker, listing them.

    Written aside first (night_aside, with the marker), put into place by publish_night once every
    element of `after` (e.g. the refresh's books, checked) exists: a run that fails before leaves a
    complete night of an earlier run as it was. Append-only across nights: only this night's
    directory is written. Returns the night's files once in place.
    """

    def __init__(self, history, night, run_id=None, after=None, snapshots=None):
        super().__init__()
        self._snapshots = list(snapshots or [])  # history_identity: which snapshots the night checked
        self._history = history
        self._night = night
        self._run_id = run_id or uuid.uuid4().hex[:12]
        self._after = after

    def expand(self, rows):
        history, night, run_id, snapshots = self._history, self._night, self._run_id, self._snapshots
        aside = night_aside(history, night, run_id)
        written = rows | "NightFiles" >> WriteStatusTable(aside, f"part-{run_id}")
        count = rows | "CountRows" >> beam.combiners.Count.Globally()
        marker = join_path(aside, ASIDE_MARKER)
        marked = (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "Marker"
            >> beam.Map(
                lambda _, files, n: write_json(
                    marker,
                    {
                        "night": night.isoformat(),
                        "rows": n,
                        "files": sorted(file_name(f) for f in files),
                        **({"snapshots": snapshots} if snapshots else {}),
                    },
                ),
                files=beam.pvalue.AsList(written),
                n=beam.pvalue.AsSingleton(count),
            )
        )
        gate = {} if self._after is None else {"after": beam.pvalue.AsList(self._after)}
        return marked | "Publish" >> beam.FlatMap(
            lambda _, files, after=(): publish_night(history, night, run_id, files),
            files=beam.pvalue.AsList(written),
            **gate,
        )
