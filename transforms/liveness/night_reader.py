"""A published refresh night, read the way a consumer of its verdicts must (docs/refresh.md):
only the status files REFRESH_OUT/summary.json's "written" names, and only a night whose books
balanced and whose run finished.

- `PublishedNight`: REFRESH_OUT, its night, its status files and rows.
- `read_published_night(flag, refresh_out)`: the checks, then the PublishedNight; BadInput else.
"""

import dataclasses

from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput
from transforms.io.lease import lease_path
from transforms.io.sinks import join_path, read_json
from transforms.io.table_record import footer_rows

__all__ = ["PublishedNight", "read_published_night"]


@dataclasses.dataclass(frozen=True)
class PublishedNight:
    """One REFRESH_OUT as its summary.json describes it.

    refresh_out: the path given; night: the summary's night (YYYY-MM-DD); status_files: the
    paths of the status files "written" names; rows: the status rows the books counted.
    """

    refresh_out: str
    night: str
    status_files: tuple[str, ...]
    rows: int


def read_published_night(flag: str, refresh_out: str) -> PublishedNight:
    """REFRESH_OUT's published night, or BadInput (exit 2, one line) when it cannot be trusted.

    Refused: no readable summary.json (a first run unfinished, not a REFRESH_OUT), a summary of
    another job, books absent or unbalanced, no "written" list, a listed status file missing (a
    publish cut short), status files whose footers hold another row count than the books' rows_out
    (a file replaced or rewritten since), or a lease on REFRESH_OUT (a refresh writing there now, or
    killed).

    Args:
        flag: the option naming it, for the message ("--drop-dead").
        refresh_out: the refresh's --output (local or gs://).
    Returns:
        The PublishedNight.
    """
    where = f"{flag} {refresh_out}"
    path = join_path(refresh_out, "summary.json")
    try:
        summary = read_json(path)
    except Exception as error:  # noqa: BLE001 (missing, unreadable or not JSON: the same refusal)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInput(
            f"{where}: no readable summary.json ({reason[:160]}): not a finished refresh output;"
            " give the REFRESH_OUT of a refresh that ended with exit 0"
        ) from None
    if not isinstance(summary, dict) or summary.get("job") != "refresh":
        job = summary.get("job") if isinstance(summary, dict) else None
        raise BadInput(f"{where}: its summary.json is not a refresh's (job {job!r}): give a refresh's --output")
    books = summary.get("books")
    if not isinstance(books, dict) or books.get("balanced") is not True:
        raise BadInput(
            f"{where}: its summary.json does not say the night's books balanced ({'books' if books else 'no books'}"
            f" {books.get('balanced') if isinstance(books, dict) else ''}): its verdicts are not to be acted on;"
            " rerun the night"
        )
    written = summary.get("written")
    if not isinstance(written, list) or not all(isinstance(name, str) and name for name in written):
        raise BadInput(f'{where}: its summary.json names no status files ("written"): rerun the night')
    # why: a lease is a refresh writing there now (its publish swaps these files) or one killed
    if FileSystems.exists(lease_path(refresh_out)):
        raise BadInput(
            f"{where}: a refresh run holds it ({lease_path(refresh_out)}): still writing, or killed"
            " before the end; wait for it to end, or rerun the night"
        )
    files = tuple(join_path(refresh_out, "status", name) for name in written)
    missing = [f for f in files if not FileSystems.exists(f)]
    if missing:
        raise BadInput(
            f"{where}: {len(missing)} status file(s) its summary.json names are missing ({missing[0]}):"
            " a run cut short while it published; rerun the night"
        )
    counted = books.get("rows_out")
    held = sum(footer_rows(list(files)).values())
    # why: a verdict lost from a file keeps its row as "no verdict", one added may drop a live row
    if held != counted:
        raise BadInput(
            f"{where}: its status files hold {held} rows, {counted} counted by its summary.json's books:"
            " not the night it published; rerun the night"
        )
    return PublishedNight(refresh_out, str(summary.get("night")), files, held)
