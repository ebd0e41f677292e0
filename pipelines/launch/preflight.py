"""Checks a job makes of its inputs before its pipeline starts: what is cheap to check here (paths,
Parquet footers and schemas) fails in one line naming the file, instead of deep inside the runner.
Its output folder's checks: pipelines.launch.output_checks.

Each check raises transforms.errors.BadInput (exit 2: the user's input) or EnvironmentFailure
(exit 1: permission, read-only file system, full disk). Paths may be local or gs://; remote paths
are checked through Beam's FileSystems (existence, footers), local ones with os as well.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat

from apache_beam.io.filesystems import FileSystems

from pipelines.launch.failures import ENVIRONMENT_ERRNOS, one_line
from pipelines.launch.output_checks import no_bucket
from transforms.errors import BadInput, EnvironmentFailure
from transforms.io.file_matches import matched_files, path_identity
from transforms.io.sinks import read_json

__all__ = [
    "check_ingest_networks",
    "check_input_file",
    "check_input_files",
    "check_not_inside_output",
    "check_table",
    "is_inside",
    "list_matches",
]

GLOB_CHARS = "*?["


def _remote(path: str) -> bool:
    return "://" in path


def _is_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def _matches(pattern: str, named: str = "") -> list[str]:
    """The paths `pattern` matches (none: an empty list). A listing that fails (storage unreachable,
    no credentials, permission) is the environment's failure, not "no file": EnvironmentFailure;
    a gs:// bucket that does not exist is BadInput (`named`: how the user gave the path)."""
    try:
        return matched_files(pattern)
    except Exception as exc:  # noqa: BLE001 (Beam wraps each path's failure in one BeamIOError)
        cause = _innermost(exc)
        if _remote(pattern) and type(cause).__name__ == "NotFound":
            # why: GCS answers 404 to listing a bucket that does not exist (a missing folder lists
            # empty): a typo in the bucket's name was exit 1, "storage unreachable".
            raise BadInput(f"{named or pattern}: {no_bucket(pattern)}") from None
        what = one_line(str(cause)) or type(cause).__name__
        raise EnvironmentFailure(
            f"storage unreachable: cannot list {pattern} ({type(cause).__name__}: {what})"
        ) from exc


def list_matches(pattern: str, named: str = "") -> list[str]:
    """The paths a path or glob matches, sorted; checked as every input's listing is.

    Args:
        pattern: a path or glob, local or gs://.
        named: how the user gave it ("--snapshot gs://b/out"), for the message.

    Returns:
        The matched paths ([] for none).

    Raises:
        BadInput: a gs:// bucket that does not exist.
        EnvironmentFailure: the listing failed (storage unreachable, no credentials).
    """
    return _matches(pattern, named)


def _innermost(exc: BaseException) -> BaseException:
    """The failure inside Beam's BeamIOErrors (each wraps its paths' failures in exception_details)."""
    for _ in range(5):
        details = getattr(exc, "exception_details", None) or {}
        inner = next((e for e in details.values() if isinstance(e, BaseException)), None)
        if inner is None:
            return exc
        exc = inner
    return exc


def check_input_files(flag: str, pattern: str) -> list[str]:
    """The files `pattern` (a path or a glob, local or gs://) names; each must be a readable file.

    Args:
        flag: how the user gave it, for the message ("--manifest cc3m=x.tsv").
        pattern: the path or glob.
    Returns:
        The matched paths, sorted.
    """
    if not _remote(pattern) and not _is_glob(pattern):
        try:
            mode = os.stat(pattern).st_mode  # follows symlinks, as the readers do
        except (FileNotFoundError, NotADirectoryError):
            raise BadInput(f"{flag}: no file matches {pattern} (no such file)") from None
        except OSError as exc:  # a folder on the way that cannot be searched: the file may well be there
            raise _unreadable(flag, pattern, exc) from None
        if stat.S_ISDIR(mode):
            raise BadInput(f"{flag}: {pattern} is a directory, not a file")
    matched = _matches(pattern)
    if not matched:
        raise BadInput(f"{flag}: no file matches {pattern}")
    for path in matched:
        if not _remote(path):
            if os.path.isdir(path):
                raise BadInput(f"{flag}: {path} is a directory, not a file")
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError as exc:
                raise _unreadable(flag, path, exc) from None
            if not regular:
                # Why: the job reads an input more than once (the checks here, the parse, repeated
                # keys' second pass); a pipe (`<(zcat m.gz)`, /dev/stdin) gave its bytes to the
                # first read and the parse found nothing: 0 rows, exit 0. A FIFO would block.
                raise BadInput(
                    f"{flag}: {path} is not a regular file (a pipe, socket or device); the job reads"
                    " its inputs more than once: save it to a file and give that"
                )
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise _unreadable(flag, path, exc) from None
    return matched


def _unreadable(flag: str, path: str, exc: OSError) -> BadInput | EnvironmentFailure:
    """The failure of an input that is there but cannot be read: a file or folder refused
    (permission) or an I/O error is the environment failing, exit 1 (CONTRACT.md, as the tables'
    readers say it); anything else (a name too long, a loop of links) is the path given, exit 2."""
    line = f"{flag}: cannot read {path} ({exc.strerror or exc})"
    return EnvironmentFailure(line) if exc.errno in ENVIRONMENT_ERRNOS else BadInput(line)


def check_input_file(flag: str, path: str | None, directory: bool = False) -> None:
    """One side input: a file (or, with directory=True, a folder) that must exist.

    Args:
        flag: the option's name, for the message.
        path: its value (None: not given, nothing to check).
        directory: the option names a folder.
    """
    if not path:
        return
    if directory:
        if not _remote(path) and not os.path.isdir(path):
            raise BadInput(f"{flag}: {path} is not a directory")
        if not _remote(path):
            # why: a folder that may not be searched made every image under it a row error, exit 0.
            # A name looked up in it needs the search right only (a 0711 folder still serves files).
            try:
                os.stat(os.path.join(path, ".search-right-probe"))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _unreadable(flag, path, exc) from None
        return
    check_input_files(flag, path)


def is_inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (symlinks, `..` and `//` resolved; local or gs://).

    Args:
        path: a file or folder.
        root: a folder.

    Returns:
        True when one names `root` or something under it.
    """
    path, root = path_identity(path), path_identity(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_not_inside_output(out: str, inputs: dict[str, list[str]]) -> None:
    """No input file lies inside the output directory: a glob over OUT's parent reads the job's own
    lease, blobs, Parquet files and summary as input lines (rows of garbage behind exit 0).

    Made once the run holds OUT's lease, so that even a first run's glob finds OUT/_LEASE.

    Args:
        out: the output directory, local or gs://.
        inputs: {how the user gave it ("--manifest cc3m=/in/**"): its paths or globs}.
    """
    root = path_identity(out)
    for flag, patterns in inputs.items():
        for pattern in patterns:
            for path in _matches(pattern):
                if path_identity(path).startswith(root + "/"):
                    raise BadInput(
                        f"{flag}: {path} lies inside --output {out}: the job would read its own output;"
                        " narrow the path or write the output elsewhere"
                    )


def _columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    with FileSystems.open(path) as handle:
        return pq.read_schema(handle).names


def check_table(flag: str, root: str, required: tuple[str, ...], pattern: str | None = None) -> list[str]:
    """An ingest output's table: ROOT/images/*.parquet exists, each footer reads, each file holds
    the `required` columns.

    Args:
        flag: the option naming it ("--input", "--snapshot").
        root: the ingest output (OUT).
        required: the columns the job needs.
        pattern: the Parquet files, when not ROOT/images/*.parquet.
    Returns:
        The table's files, sorted.
    """
    if not _remote(root) and not _is_glob(root):
        if not os.path.exists(root):
            raise BadInput(f"{flag} {root}: no such directory")
        if not os.path.isdir(root) and not root.endswith(".parquet"):
            raise BadInput(f"{flag} {root} is a file, not an ingest output directory")
    pattern = pattern or FileSystems.join(root, "images", "*.parquet")
    files = _matches(pattern, named=f"{flag} {root}")
    if not files:
        raise BadInput(f"{flag} {root} is not an ingest output: no files match {pattern}")

    def read(path: str) -> tuple[str, list[str] | None, str]:
        try:
            return path, _columns(path), ""
        except Exception as exc:  # noqa: BLE001 (any unreadable footer is the same mistake)
            if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
                raise  # why: permission, I/O error: the environment failing (exit 1), not a damaged file
            return path, None, one_line(str(exc)) or type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(pool.map(read, files))
    for path, names, error in footers:
        if names is None:
            raise BadInput(f"{flag}: {path} is not a readable Parquet file ({error})")
        missing = [c for c in required if c not in names]
        if missing:
            raise BadInput(
                f"{flag}: {path} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}:"
                f" not an ingest images/ table"
            )
    return files


def recorded_options(root: str) -> dict:
    """The options ROOT's writer recorded in its summary.json ({} without a readable one: an older
    layout, files named by a glob; the table checks report what matters there).

    Args:
        root: a job's output directory.
    Returns:
        summary.json's "options", or {}.
    """
    try:
        summary = read_json(FileSystems.join(root, "summary.json"))
    except Exception:  # noqa: BLE001 (absent or unreadable)
        return {}
    options = summary.get("options") if isinstance(summary, dict) else None
    return options if isinstance(options, dict) else {}


def check_resumed_views(root: str, views: tuple[str, ...]) -> None:
    """Refuses (BadInput) a --resume whose picture views are not those OUT's rows were hashed with:
    the carried rows keep OUT's view hashes (a view not computed there is null) while the rows
    fetched get this run's, so dedup matches through a view on some rows only. An OUT whose
    summary.json records no views (written before they were recorded) is not checked.

    Args:
        root: the OUT resumed.
        views: this run's views (DedupSettings.views).
    """
    recorded = recorded_options(root).get("views")
    if not isinstance(recorded, list) or tuple(recorded) == tuple(views):
        return
    spelt = lambda names: ",".join(names) or "none"  # noqa: E731
    raise BadInput(
        f"--resume: OUT's rows were hashed with --views {spelt(recorded)}, this run's would be with"
        f" --views {spelt(views)}: the rows carried would keep OUT's view hashes and the rows fetched"
        f" get the others. Resume with --views {spelt(recorded)}, or ingest into a new --output"
    )


def check_ingest_networks(flag: str, root: str, allowed: list[str]) -> None:
    """Refuses (BadInput) a run whose --allow-network lacks a network the ingest of ROOT allowed
    (its summary.json's options): every URL of ROOT there would be refused by the address policy,
    which the refresh takes as a 'gone' answer, so a command missing the flag would call the live
    URLs of those networks dead after --dead-after nights. A ROOT without a readable summary.json
    (an older layout, files named by a glob) is not checked.

    Args:
        flag: the option naming ROOT ("--snapshot").
        root: an ingest output.
        allowed: this run's --allow-network values.
    """
    import ipaddress  # noqa: PLC0415 (only the refresh needs it)

    ingest = recorded_options(root).get("allow_network")
    if not isinstance(ingest, list):
        return
    ours = []
    for value in allowed:
        try:
            ours.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            continue  # FetchConfig.from_options names the malformed value
    for value in ingest:
        try:
            network = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            continue
        if not any(network.version == n.version and network.subnet_of(n) for n in ours):  # type: ignore[arg-type]
            raise BadInput(
                f"{flag} {root} was ingested with --allow-network {value}, which this run does not"
                f" allow: its URLs there would be refused and judged gone (dead after --dead-after"
                f" nights); pass --allow-network {value} as the ingest did"
            )
