"""The refresh history: one directory per night, HISTORY/<YYYY-MM-DD>/part-*.parquet + _COMPLETE.
A night reads the latest complete night before it and writes only its own directory.
"""
import datetime

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.io.sinks import join_path, write_json
from transforms.liveness.checks import WriteStatusTable

__all__ = [
    "HISTORY_COLUMNS", "COMPLETE_MARKER", "night_dir", "complete_nights", "previous_night", "clear_night",
    "delete_matching", "ReadHistory", "WriteHistory",
]


HISTORY_COLUMNS = ["key", "night", "status", "consecutive_failures", "previous_nights", "dead_since"]
COMPLETE_MARKER = "_COMPLETE"


def night_dir(history, night):
    return join_path(history, night.isoformat())


def complete_nights(history):
    """Nights of the history whose write finished (their _COMPLETE marker exists), oldest first."""
    try:
        found = FileSystems.match([join_path(history, "*", COMPLETE_MARKER)])[0].metadata_list
    except Exception:  # no history yet
        return []
    nights = []
    for meta in found:
        name = meta.path.rstrip("/").split("/")[-2]
        try:
            nights.append(datetime.date.fromisoformat(name))
        except ValueError:
            continue
    return sorted(set(nights))


def previous_night(history, night):
    """The latest complete night strictly before `night`, or None: a re-run of a night reads what
    the first run read, whatever nights were written since."""
    earlier = [n for n in complete_nights(history) if n < night] if history else []
    return earlier[-1] if earlier else None


def clear_night(history, night):
    """Before a night is (re)written: its marker first (readers skip it from then on), then its files."""
    directory = night_dir(history, night)
    marker = join_path(directory, COMPLETE_MARKER)
    if FileSystems.exists(marker):
        FileSystems.delete([marker])
    delete_matching(join_path(directory, "*"))


def delete_matching(pattern):
    try:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:
        return
    if paths:
        FileSystems.delete(paths)


class ReadHistory(beam.PTransform):
    """(key, history row) of the latest complete night before `night`; nothing without one."""

    def __init__(self, history, night):
        super().__init__()
        self._history = history
        self._night = night
        self.previous = previous_night(history, night) if history else None

    def expand(self, pbegin):
        if self.previous is None:
            return pbegin | "NoHistory" >> beam.Create([])
        pattern = join_path(night_dir(self._history, self.previous), "*.parquet")
        return (
            pbegin
            | "ReadNight" >> beam.io.ReadFromParquet(pattern, columns=HISTORY_COLUMNS)
            | "ByKey" >> beam.Map(lambda row: (row["key"], row))
        )

class WriteHistory(beam.PTransform):
    """Status rows -> HISTORY/<night>/part-*.parquet, then HISTORY/<night>/_COMPLETE once the files
    are final. Append-only across nights: only this night's directory is written (cleared first by
    clear_night at construction, so a re-run replaces the night instead of adding to it)."""

    def __init__(self, history, night):
        super().__init__()
        self._history = history
        self._night = night

    def expand(self, rows):
        directory = night_dir(self._history, self._night)
        written = rows | "NightFiles" >> WriteStatusTable(directory)
        count = rows | "CountRows" >> beam.combiners.Count.Globally()
        marker = join_path(directory, COMPLETE_MARKER)
        night = self._night.isoformat()
        return (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "Marker" >> beam.Map(
                lambda _, files, n: write_json(marker, {"night": night, "rows": n,
                                                        "files": sorted(f.split("/")[-1] for f in files)}),
                files=beam.pvalue.AsList(written), n=beam.pvalue.AsSingleton(count))
        )
