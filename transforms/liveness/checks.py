"""The refresh's Beam stages: snapshots -> one check per distinct URL -> placeholders -> one verdict
per key -> the status and host tables. The rules they apply are in `verdicts` and `plans`.
"""

import concurrent.futures

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from transforms import schema
from transforms.bounded_futures import BoundedFuturesDoFn
from transforms.errors import BadInput
from transforms.fetch.client import Fetcher
from transforms.io.checked_parquet import ReadTableRecords, WriteTableFiles
from transforms.io.manifests import LINE_KEYED
from transforms.liveness.dark_night import had_picture
from transforms.liveness.plans import check_file, finish_check, new_check, plan_check, run_plan
from transforms.liveness.verdicts import (
    ALIVE,
    CONDITIONAL,
    FILE,
    GET,
    HEAD,
    HEAD_GET,
    NOT_CHECKED,
    VERDICTS,
    best_entry,
    judge,
    placeholder_votes,
    snapshot_entry,
    url_group,
)

__all__ = [
    "SNAPSHOT_COLUMNS",
    "REQUIRED_SNAPSHOT_COLUMNS",
    "snapshot_columns",
    "ReadSnapshots",
    "CheckUrlsDoFn",
    "CheckUrls",
    "FindPlaceholders",
    "Judge",
    "WriteStatusTable",
    "host_counts",
    "host_record",
    "HostTable",
    "HOST_SCHEMA",
    "WriteHostTable",
]


SNAPSHOT_COLUMNS = [
    "dataset",
    "key",
    "url",
    "status",
    "http_status",
    "error",
    "sha256",
    "phash",
    "etag",
    "last_modified",
    "size_bytes",
    "fetched_at",
    "final_url",
    "is_placeholder",
    "content_type",
]
REQUIRED_SNAPSHOT_COLUMNS = ("key", "url", "status")


def snapshot_columns(pattern: str) -> list[str]:
    """The SNAPSHOT_COLUMNS a snapshot's files hold (read from the first file's footer): tables
    written before a column existed are still read.

    Args:
        pattern: the snapshot's Parquet file pattern.
    Returns:
        the columns to read.
    Raises:
        ValueError: no file matches, or the files are not an ingest table.
    """
    import pyarrow.parquet as pq

    files = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not files:
        raise ValueError(f"no Parquet files match {pattern}")
    try:
        with FileSystems.open(files[0]) as handle:
            names = set(pq.read_schema(handle).names)
    except Exception as exc:
        raise ValueError(f"{files[0]} is not a readable Parquet file: {exc}") from None
    missing = [c for c in REQUIRED_SNAPSHOT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{files[0]} has no {', '.join(missing)} column: not an ingest images/ table")
    return [c for c in SNAPSHOT_COLUMNS if c in names]


class ReadSnapshots(beam.PTransform):
    """Snapshot Parquet files -> {"entries": one entry per key (a key in several snapshots: see
    entry_rank), and the refresh's books: "rows_in": (label, rows read) per snapshot, "merged": rows
    that were another row's key (summed while merging, apart from the read count)}.
    """

    def __init__(self, patterns):
        super().__init__()
        # [(label, file pattern, columns)]; columns None: looked up in the files (snapshot_columns)
        self._patterns = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in patterns]

    def expand(self, pbegin):
        parts, counts = [], []
        for order, (label, pattern, columns) in enumerate(self._patterns):
            part = (
                pbegin
                | f"Read{order}" >> ReadTableRecords(pattern, columns=columns or snapshot_columns(pattern))
                | f"Entries{order}" >> beam.Map(_keyed_entry, label, order)
            )
            parts.append(part)
            counts.append(
                part
                | f"Count{order}" >> beam.combiners.Count.Globally()
                | f"Label{order}" >> beam.Map(lambda n, label: (label, n), label)
            )
        merged = (
            parts
            | "AllSnapshots" >> beam.Flatten()
            | "ByKey" >> beam.Map(lambda e: (e["key"], (e, 1)))
            | "OnePerKey" >> beam.CombinePerKey(_best_counted)
        )
        return {
            "entries": merged | "Entry" >> beam.Map(lambda kv: kv[1][0]),
            "rows_in": counts | "AllCounts" >> beam.Flatten(),
            "merged": merged | "Merged" >> beam.Map(lambda kv: kv[1][1] - 1) | "SumMerged" >> beam.CombineGlobally(sum),
        }


def _keyed_entry(row, label, order):
    """snapshot_entry(), refusing a row without a key (BadInput: exit 2): rows are merged by key, so
    keyless rows became one status row, the others counted as "merged" in books that balanced."""
    if row.get("key") is None or row.get("key") == "":
        raise BadInput(f"--snapshot {label}: a row has no key (url {row.get('url')!r}): not an ingest table")
    return snapshot_entry(row, label, order)


def _best_counted(pairs):
    """(entry, rows) pairs of one key -> (the best entry, rows summed)."""
    pairs = list(pairs)
    _refuse_other_records([entry for entry, _ in pairs])
    return best_entry(entry for entry, _ in pairs), sum(n for _, n in pairs)


def _refuse_other_records(entries):
    """A CC3M/CC12M key is a manifest line number: in two snapshots with two URLs it names two
    records (slices of one manifest ingested apart), and merging them would leave one URL of the
    night without a verdict. An ID-keyed record may have moved: its latest URL is checked."""
    first = entries[0]
    for other in entries[1:]:
        if other["url"] != first["url"] and other["snapshot"] != first["snapshot"] and first["dataset"] in LINE_KEYED:
            raise BadInput(
                f"--snapshot {first['snapshot']} and --snapshot {other['snapshot']} both hold {first['key']}, for"
                f" {first['url']} and {other['url']}: CC3M and CC12M keys are manifest line numbers, so these are"
                " slices of a manifest ingested apart, and one URL would get no verdict. Refresh each snapshot"
                " into its own --output, or ingest the slices in one run"
            )


class CheckUrlsDoFn(BoundedFuturesDoFn):
    """(url, [entries]) -> {"url", "entries", "check"}: one check per distinct URL, many in flight.

    Shares the ingest Fetcher (address policy after DNS and every redirect, per-host caps, adaptive
    pacing, failing-host short-circuit, deadlines) through one instance per worker process.
    """

    def __init__(self, config, params):
        super().__init__(max_pending=config.concurrency * 2)
        self._config = config
        self._params = params
        self._shared = shared.Shared()

    def setup(self):
        config = self._config
        self._fetcher = self._shared.acquire(lambda: Fetcher(config))
        self._files = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self._methods = {
            m: beam.metrics.Metrics.counter("refresh", f"method_{m}")
            for m in (NOT_CHECKED, CONDITIONAL, HEAD, HEAD_GET, GET, FILE)
        }
        self._requests = beam.metrics.Metrics.counter("refresh", "requests")

    def process(self, element):
        url, entries = element
        entries = sorted(entries, key=lambda e: e["key"])
        plan = plan_check(url, entries, self._params)
        if plan["method"] == NOT_CHECKED:
            yield self._emit(url, entries, new_check(plan))
            return
        if plan["method"] == FILE:
            future = self._files.submit(check_file, plan, self._params.max_pixels)
        else:
            future = self._fetcher.run_soon(run_plan(self._fetcher, plan))
        yield from self._track(future, (url, entries, plan))

    def _completed(self, context, outcome):
        url, entries, plan = context
        # Hashing happens here, on the DoFn's thread, never on the fetcher's event loop.
        check = outcome if plan["method"] == FILE else finish_check(plan, outcome, self._params.max_pixels)
        return self._emit(url, entries, check)

    def _emit(self, url, entries, check):
        self._methods[check["method"]].inc()
        self._requests.inc(check.get("requests") or 0)
        return {"url": url, "entries": entries, "check": check}

    def teardown(self):
        self._fetcher = None  # the shared Fetcher closes itself once no instance holds it
        files = getattr(self, "_files", None)
        if files is not None:
            files.shutdown(wait=False)


class CheckUrls(beam.PTransform):
    """Snapshot entries -> one {"url", "entries", "check"} per distinct URL.

    The GroupByKey also spreads the URLs over workers before the fetch (no fusion with the read).
    """

    def __init__(self, config, params):
        super().__init__()
        self._config = config
        self._params = params

    def expand(self, entries):
        return (
            entries
            | "ByUrl" >> beam.Map(lambda e: (url_group(e), e))
            | "GroupUrls" >> beam.GroupByKey()
            | "Check" >> beam.ParDo(CheckUrlsDoFn(self._config, self._params))
        )


class FindPlaceholders(beam.PTransform):
    """Checked URLs -> {"placeholders": (sha256, n) for each picture redirected URLs were sent to in
    place of n >= params.placeholder_min_urls different snapshot pictures tonight,
    "frequent": [(sha256, n)], the 10 pictures that replaced the most different pictures (n >= 2),
    redirected or not}."""

    def __init__(self, params, top=10):
        super().__init__()
        self._params = params
        self._top = top

    def expand(self, checked):
        params = self._params
        minimum = params.placeholder_min_urls
        votes = (
            checked
            | "Votes" >> beam.FlatMap(lambda item: placeholder_votes(item["entries"], item["check"], params))
            | "OnePerReplacedPicture" >> beam.Distinct()
        )
        placeholders = (
            votes
            | "Redirected" >> beam.Filter(lambda vote: vote[2] and minimum > 0)
            | "ServedPicture" >> beam.Map(lambda vote: vote[0])
            | "CountVotes" >> beam.combiners.Count.PerElement()
            | "Enough" >> beam.Filter(lambda kv: kv[1] >= minimum)
        )
        frequent = (
            votes
            | "AnyVote" >> beam.Map(lambda vote: (vote[0], vote[1]))
            | "OncePerPair" >> beam.Distinct()
            | "Picture" >> beam.Keys()
            | "CountAll" >> beam.combiners.Count.PerElement()
            | "Repeated" >> beam.Filter(lambda kv: kv[1] >= 2)
            | "Top" >> beam.combiners.Top.Of(self._top, key=lambda kv: (kv[1], kv[0]))
        )
        return {"placeholders": placeholders, "frequent": frequent}


class Judge(beam.PTransform):
    """Checked URLs + last night's history rows (key, row) + placeholders + host outages and walls
    (optional) -> one status row per key."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def expand(self, inputs):
        checked, previous, placeholders = inputs["checked"], inputs["previous"], inputs["placeholders"]
        outages = inputs["outages"] if "outages" in inputs else checked.pipeline | "NoOutages" >> beam.Create([])
        walls = inputs["walls"] if "walls" in inputs else checked.pipeline | "NoWalls" >> beam.Create([])
        params = self._params
        per_key = checked | "PerKey" >> beam.FlatMap(
            lambda item: [(e["key"], (e, item["check"])) for e in item["entries"]]
        )
        return (
            {"now": per_key, "previous": previous}
            | "WithHistory" >> beam.CoGroupByKey()
            | "Verdicts"
            >> beam.FlatMap(
                _judge_joined,
                beam.pvalue.AsDict(placeholders),
                params,
                outages=beam.pvalue.AsDict(outages),
                walls=beam.pvalue.AsDict(walls),
            )
        )


def _judge_joined(item, detected, params, outages=None, walls=None):
    _key, grouped = item
    previous = next(iter(grouped["previous"]), None)
    for entry, check in grouped["now"]:
        # Why: a key names a manifest record, not a URL: a re-ingested, edited manifest renumbers its
        # lines (cc3m:7 is another URL now). Another URL's streak or dead verdict is no evidence
        # about this one: its first night here, judged from its own ingest fetch.
        same_url = previous is not None and (previous.get("url") or "").strip() == (entry.get("url") or "").strip()
        yield judge(entry, check, previous if same_url else None, detected, params, outages, walls)


class WriteStatusTable(beam.PTransform):
    """Status rows -> <directory>/<prefix>-NNNNN-of-MMMMM.parquet; returns the written file names."""

    def __init__(self, directory, prefix="part"):
        super().__init__()
        self._directory = directory
        self._prefix = prefix

    def expand(self, rows):
        return (
            rows
            | "Columns" >> beam.Map(lambda row: {name: row.get(name) for name in schema.REFRESH_COLUMNS})
            # why not Beam's WriteToParquet: it cannot store page checksums, and the next night's
            # streaks are read back from these files (a flipped byte would read as another status)
            | "Parquet" >> WriteTableFiles(self._directory, schema.REFRESH_SCHEMA, self._prefix)
        )


def host_counts(row):
    """(host, (one count per verdict..., rows with a picture the night before)) of a status row."""
    verdicts = tuple(int(row["status"] == v) for v in VERDICTS)
    return row["host"] or "(no host)", (*verdicts, int(had_picture(row)))


def host_record(host, counts):
    *verdicts, pictures_before = counts
    record = {"host": host, "rows": sum(verdicts)}
    record.update(zip(VERDICTS, verdicts, strict=True))
    record["success_rate"] = round(record[ALIVE] / record["rows"], 6) if record["rows"] else None
    record["pictures_before"] = pictures_before  # why: dark_night.py counts the hosts that served
    return record


def _sum_tuples(tuples):
    total = None
    for t in tuples:
        total = t if total is None else tuple(a + b for a, b in zip(total, t, strict=True))
    return total or (0,) * (len(VERDICTS) + 1)


class HostTable(beam.PTransform):
    """Status rows -> one record per host: rows, one count per verdict, success rate."""

    def expand(self, rows):
        return (
            rows
            | "HostCounts" >> beam.Map(host_counts)
            | "SumPerHost" >> beam.CombinePerKey(_sum_tuples)
            | "Record" >> beam.MapTuple(host_record)
        )


HOST_SCHEMA = pa.schema(
    [("host", pa.string()), ("rows", pa.int64())]
    + [(v, pa.int64()) for v in VERDICTS]
    + [("success_rate", pa.float64()), ("pictures_before", pa.int64())]
)


class WriteHostTable(beam.PTransform):
    """Host records -> <directory>/<prefix>-NNNNN-of-MMMMM.parquet (the by-host figures, all hosts)."""

    def __init__(self, directory, prefix="part"):
        super().__init__()
        self._directory = directory
        self._prefix = prefix

    def expand(self, records):
        return records | "Parquet" >> WriteTableFiles(self._directory, HOST_SCHEMA, self._prefix)
