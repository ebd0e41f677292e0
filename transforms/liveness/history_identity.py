"""Which snapshot a refresh history follows: each night's _COMPLETE marker names the snapshots it
checked (their path identities), and a night refuses a --history last written for other ones.

A history is one snapshot's nights: the failure streaks, `dead_since` and `previous_status` of its
keys. Given another snapshot's history (a copied command, two schedules swapped), a night was judged
against nights of other URLs, exit 0: every streak restarted (a key's URL differs, so its row is
no evidence), the night written there mixed two snapshots' rows, and the next night of the right
snapshot read that night and restarted every streak again (a URL 404 on two nights was
`unreachable`, not `dead`, and `dead_since` began anew). `--snapshot-replaced` says the change is
meant (the snapshot moved, a slice added): the night then records the new snapshots.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from transforms.errors import BadInput, EnvironmentFailure
from transforms.io.file_matches import path_identity
from transforms.io.sinks import join_path, read_json
from transforms.liveness.history import COMPLETE_MARKER, night_dir

__all__ = ["snapshot_identities", "marked_snapshots", "check_history_snapshots"]


def snapshot_identities(roots: Iterable[str]) -> list[str]:
    """The snapshots a night checks, one spelling each (path_identity: `out`, `./out/` and a link
    to it are one), sorted: what its history night's marker records.

    Args:
        roots: the --snapshot directories.
    Returns:
        Their identities, sorted, each once.
    """
    return sorted({path_identity(root) for root in roots})


def marked_snapshots(history: str, night: datetime.date) -> list[str] | None:
    """The snapshots a complete history night's marker names; None for a night written before
    markers named them.

    Args:
        history: the --history directory.
        night: a complete night.
    Returns:
        The identities, or None.
    Raises:
        EnvironmentFailure: the marker cannot be read (history.night_files read it a moment ago).
    """
    marker = join_path(night_dir(history, night), COMPLETE_MARKER)
    try:
        found = read_json(marker).get("snapshots")
    except Exception as exc:  # noqa: BLE001 (any storage error: exit 1)
        raise EnvironmentFailure(f"cannot read the history marker {marker}: {exc}") from None
    return list(found) if isinstance(found, list) else None


def check_history_snapshots(
    history: str | None, previous: datetime.date | None, snapshots: list[str], replaced: bool
) -> None:
    """Raises BadInput (exit 2, one line) when the history night this night builds on checked
    other snapshots than tonight's, unless `replaced` (--snapshot-replaced) says it is meant.

    Args:
        history: the --history directory, or None.
        previous: the night built on (history.previous_night), or None (a first night).
        snapshots: tonight's snapshot_identities().
        replaced: --snapshot-replaced.
    """
    if not history or previous is None or replaced:
        return
    before = marked_snapshots(history, previous)
    if before is None or sorted(before) == sorted(snapshots):
        return  # why None: a night written before markers named snapshots cannot tell (docs/refresh.md)
    raise BadInput(
        f"--history {history} follows --snapshot {', '.join(before)} (its night {previous.isoformat()}), not"
        f" --snapshot {', '.join(snapshots)}: judged against another snapshot's nights, every streak restarts"
        " and the history mixes two snapshots; give this snapshot its own --history, or add"
        " --snapshot-replaced if it replaces that one on purpose (moved, a slice added)"
    )
