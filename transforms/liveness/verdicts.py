"""Nightly refresh of an ingest snapshot: which URLs died, which changed picture, since last night.

One verdict per snapshot key and night (README.md, "Nightly refresh" has the full rules):

    alive        the same picture (same bytes, or re-encoded bytes within --max-distance of pHash)
    changed      another picture
    unreachable  timeout, 5xx, connection failure, ... : maybe temporary
    dead         404/410/451, DNS name gone, a placeholder picture, a soft 404, an opt-out;
                 after --dead-after failed nights in a row

The verdict logic is pure functions over plain dicts (snapshot entries, checks, history rows), tested
alone; the Beam parts are small: `CheckUrls` (one cheap-first check per distinct URL, through the
ingest Fetcher), `Judge` (per key, with last night's history row), `ReadHistory`/`WriteHistory`
(one directory per night) and `SummarizeRefresh`.
"""
import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import re
import time
import urllib.parse

import apache_beam as beam
import imagehash
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from transforms import schema
from transforms.clustering.placeholders import KNOWN_PLACEHOLDERS
from transforms.bounded_futures import BoundedFuturesDoFn
from transforms.fetch.client import Fetcher
from transforms.hashing import DEFAULT_MAX_PIXELS, inspect_image
from transforms.io.sinks import join_path, write_json

ALIVE = "alive"
CHANGED = "changed"
UNREACHABLE = "unreachable"
DEAD = "dead"
VERDICTS = (ALIVE, CHANGED, UNREACHABLE, DEAD)

# Kinds of failed check.
GONE = "gone"                # the server or DNS says the image is not there
TRANSIENT = "transient"      # could not tell tonight: timeout, 5xx, connection failure, ...
UNFETCHABLE = "unfetchable"  # never requested: the snapshot row's URL is invalid or refused

# How a URL was checked.
NOT_CHECKED = "none"
CONDITIONAL = "conditional"  # GET with If-None-Match / If-Modified-Since
HEAD = "head"                # HEAD alone settled it
HEAD_GET = "head+get"
GET = "get"
FILE = "file"                # a file row (ImageNet): looked up through Beam's filesystems

GONE_HTTP_STATUSES = frozenset({404, 410, 451})
HEAD_REFUSED = frozenset({405, 501})
BASELINE_STATUSES = frozenset({schema.OK, schema.HASH_MISMATCH})  # rows whose picture was hashed
NOT_RECHECKED = frozenset({schema.INVALID_URL, schema.BLOCKED})

DEFAULT_MAX_DISTANCE = 6       # same picture at or under this pHash distance (README.md, "Nightly refresh")
DEFAULT_DEAD_AFTER = 1
DEFAULT_UNREACHABLE_DEAD_AFTER = 30
DEFAULT_PLACEHOLDER_MIN_URLS = 3
DAYS_PER_MONTH = 30.4375

SNAPSHOT_COLUMNS = ["dataset", "key", "url", "status", "http_status", "error", "sha256", "phash", "etag",
                    "last_modified", "size_bytes", "fetched_at", "final_url", "is_placeholder"]
REQUIRED_SNAPSHOT_COLUMNS = ("key", "url", "status")
HISTORY_COLUMNS = ["key", "night", "status", "consecutive_failures", "previous_nights", "dead_since"]
COMPLETE_MARKER = "_COMPLETE"


# (host suffix, path pattern, what): where hosts send requests for images they no longer serve.
KNOWN_PLACEHOLDER_URLS = (
    ("yimg.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("flickr.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("staticflickr.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("imgur.com", re.compile(r"^/removed\.(?:png|jpg|gif)$"), "Imgur 'removed'"),
)

# Any host: a redirect whose target file is named like a placeholder ("photo_unavailable.png",
# "no-image.gif", "placeholder.jpg", ...). Only after a redirect: a photo's own URL may say anything.
PLACEHOLDER_FILE_NAME = re.compile(
    r"(?:unavailable|placeholder|no[-_]?image|no[-_]?photo|not[-_]?found|removed)[^/]*\.(?:png|jpe?g|gif|webp)$",
    re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class RefreshParams:
    night: datetime.date
    max_distance: int = DEFAULT_MAX_DISTANCE
    dead_after: int = DEFAULT_DEAD_AFTER
    unreachable_dead_after: int = DEFAULT_UNREACHABLE_DEAD_AFTER  # 0: never
    placeholder_min_urls: int = DEFAULT_PLACEHOLDER_MIN_URLS      # 0: no many-URLs rule
    placeholder_sha256: frozenset = frozenset()
    placeholder_phash: frozenset = frozenset(p.phash for p in KNOWN_PLACEHOLDERS if p.phash)
    head_first: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS


def parse_placeholder(value):
    """--placeholder HASH: 64 hex digits are a sha256, 16 a pHash. Returns (kind, lowercase hex)."""
    text = (value or "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{64}", text):
        return "sha256", text
    if re.fullmatch(r"[0-9a-f]{16}", text):
        return "phash", text
    raise ValueError(f"--placeholder takes a sha256 (64 hex digits) or a pHash (16 hex digits), got {value!r}")


def parse_night(value):
    if value is None:
        return datetime.datetime.now(datetime.timezone.utc).date()
    try:
        return datetime.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"--night takes YYYY-MM-DD, got {value!r}") from None


# ---- snapshot entries -----------------------------------------------------------------------------

def host_of(url):
    try:
        return (urllib.parse.urlsplit((url or "").strip()).hostname or "").lower() or None
    except ValueError:
        return None


def is_http(url):
    return (url or "").strip().lower().startswith(("http://", "https://"))


def snapshot_entry(row, snapshot=None, order=0):
    """A snapshot (ingest) row reduced to what the refresh needs."""
    url = row.get("url")
    return {
        "key": row.get("key"), "dataset": row.get("dataset"), "url": url,
        "host": host_of(url) if is_http(url) else None,
        "ingest_status": row.get("status"), "ingest_http_status": row.get("http_status"),
        "ingest_error": row.get("error"), "sha256": row.get("sha256"), "phash": row.get("phash"),
        "etag": row.get("etag"), "last_modified": row.get("last_modified"), "size_bytes": row.get("size_bytes"),
        "fetched_at": row.get("fetched_at"), "is_placeholder": bool(row.get("is_placeholder")),
        "snapshot": snapshot, "order": order,
    }


def snapshot_columns(pattern):
    """The SNAPSHOT_COLUMNS a snapshot's files hold (read from the first file's footer): tables
    written before a column existed are still read. Raises ValueError if the files are not an ingest
    table."""
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


def has_baseline(entry):
    """The snapshot holds this key's picture: the refresh compares against it."""
    return entry.get("ingest_status") in BASELINE_STATUSES and bool(entry.get("sha256")) and bool(entry.get("phash"))


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def entry_rank(entry):
    """A key in several snapshots: the one with a picture, then the latest fetch, then the first snapshot."""
    return has_baseline(entry), entry.get("fetched_at") or _EPOCH, -entry.get("order", 0), entry.get("url") or ""


def best_entry(entries):
    return max(entries, key=entry_rank)


def url_group(entry):
    """One check per distinct URL as the snapshot wrote it; URL-less rows stay alone."""
    url = (entry.get("url") or "").strip()
    return url if url else "\0" + str(entry.get("key"))


def ingest_verdict(entry):
    """The snapshot row read as a verdict: the 'before' of a key's first refresh night."""
    status = entry.get("ingest_status")
    if status in BASELINE_STATUSES:
        return ALIVE
    if status == schema.HTTP_ERROR and entry.get("ingest_http_status") in GONE_HTTP_STATUSES:
        return DEAD
    if status in NOT_RECHECKED or status in (schema.OPTED_OUT, schema.NOT_IMAGE):
        return DEAD
    return UNREACHABLE


# ---- the check of one URL -------------------------------------------------------------------------

def plan_check(url, entries, params):
    """How to check one distinct URL, cheapest first (README.md, "Nightly refresh", "Requests").

    - every row of the URL was invalid_url/blocked at ingest: no request;
    - not http(s) but read at ingest (ImageNet files): look the file up;
    - one picture recorded for it, with an ETag or Last-Modified: a conditional GET (a 304 settles
      it without a body; a changed picture comes back in the same request);
    - otherwise HEAD first (dead URLs settle without a body), then GET when HEAD cannot settle it;
      GET straight away with head_first=False.
    """
    plan = {"url": (url or "").strip(), "method": GET, "headers": None,
            "validated_sha256": None, "validated_phash": None, "size_bytes": None}
    if all(e.get("ingest_status") in NOT_RECHECKED for e in entries) or not plan["url"]:
        plan["method"] = NOT_CHECKED
        return plan
    if not is_http(plan["url"]):
        plan["method"] = FILE
        sizes = {e.get("size_bytes") for e in entries if has_baseline(e)}
        plan["size_bytes"] = sizes.pop() if len(sizes) == 1 else None
        return plan
    pictures = {e["sha256"] for e in entries if has_baseline(e)}
    with_validators = sorted((e for e in entries if has_baseline(e) and (e.get("etag") or e.get("last_modified"))),
                             key=lambda e: e.get("fetched_at") or _EPOCH)
    if len(pictures) == 1 and with_validators:
        latest = with_validators[-1]
        headers = {}
        if latest.get("etag"):
            headers["If-None-Match"] = latest["etag"]
        if latest.get("last_modified"):
            headers["If-Modified-Since"] = latest["last_modified"]
        plan.update(method=CONDITIONAL, headers=headers, validated_sha256=latest["sha256"],
                    validated_phash=latest["phash"])
    elif params.head_first:
        plan["method"] = HEAD
    return plan


def head_settles(head):
    """True when a HEAD answer is enough: the URL is gone or failing. A 2xx, a refused HEAD
    (405/501) or another 4xx (servers that mishandle HEAD) needs the GET."""
    if head.status == schema.OK:
        return False
    if head.status == schema.HTTP_ERROR:
        code = head.http_status or 0
        if code in HEAD_REFUSED:
            return False
        return code in GONE_HTTP_STATUSES or code >= 500 or code == 429 or 300 <= code < 400
    return True  # timeout, connection failure, blocked, invalid redirect, opted out


async def run_plan(fetcher, plan):
    """The requests of one plan, in order, on the fetcher's loop. Returns [(method, FetchResult)]."""
    url = plan["url"]
    if plan["method"] == CONDITIONAL:
        return [("GET", await fetcher.fetch(url, "GET", plan["headers"]))]
    steps = []
    if plan["method"] == HEAD:
        head = await fetcher.fetch(url, "HEAD")
        steps.append(("HEAD", head))
        if head_settles(head):
            return steps
    steps.append(("GET", await fetcher.fetch(url, "GET")))
    return steps


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _picture(check, body, max_pixels):
    check["sha256"] = hashlib.sha256(body).hexdigest()
    image = inspect_image(body, max_pixels)
    check.update(image_status=image.status, image_error=image.error, phash=image.phash)
    return check


def new_check(plan, method=None):
    return {"method": method or plan["method"], "requests": 0, "status": None, "http_status": None, "error": None,
            "final_url": None, "content_type": None, "name_not_found": False, "not_modified": False,
            "validated_sha256": plan.get("validated_sha256"), "validated_phash": plan.get("validated_phash"),
            "sha256": None, "phash": None, "image_status": None, "image_error": None, "checked_at": _now()}


def finish_check(plan, steps, max_pixels=DEFAULT_MAX_PIXELS):
    """[(method, FetchResult)] of a plan -> the check dict (hashing the body, if any)."""
    methods = [m for m, _ in steps]
    label = plan["method"] if plan["method"] == CONDITIONAL else (
        HEAD_GET if methods == ["HEAD", "GET"] else HEAD if methods == ["HEAD"] else GET)
    _, last = steps[-1]
    check = new_check(plan, label)
    check.update(requests=sum(r.attempts for _, r in steps), status=last.status, http_status=last.http_status,
                 error=last.error, final_url=last.final_url, content_type=last.content_type,
                 name_not_found=bool(last.name_not_found))
    if last.status == schema.OK:
        if last.http_status == 304:
            check["not_modified"] = plan["method"] == CONDITIONAL
            if not check["not_modified"]:  # a 304 we did not ask for cannot vouch for anything
                check.update(status=schema.HTTP_ERROR, error="HTTP 304 to an unconditional request")
        elif methods[-1] == "GET":
            _picture(check, last.body or b"", max_pixels)
    return check


def check_file(plan, max_pixels=DEFAULT_MAX_PIXELS):
    """A file row (ImageNet): gone when missing; the same size as at ingest counts as the same file
    (reading 1.2M files every night to hash them would cost more than the answer is worth);
    otherwise read and compared like a download."""
    check = new_check(plan, FILE)
    path = plan["url"]
    check["final_url"] = path
    try:
        matches = FileSystems.match([path])[0].metadata_list
    except Exception:  # a missing file raises on some filesystems, matches nothing on others
        matches = []
    if not matches:
        check.update(status=schema.HTTP_ERROR, http_status=404, error=f"file {path} no longer exists")
        return check
    size = matches[0].size_in_bytes
    if plan.get("size_bytes") is not None and size == plan["size_bytes"]:
        check.update(status=schema.OK, not_modified=True)
        return check
    try:
        with FileSystems.open(path) as handle:
            body = handle.read()
    except Exception as exc:
        check.update(status=schema.CONNECTION_ERROR, error=f"cannot read {path}: {exc}"[:300])
        return check
    check["status"] = schema.OK
    return _picture(check, body, max_pixels)


# ---- verdicts ---------------------------------------------------------------------------------------

def phash_distance(a, b):
    if not a or not b:
        return None
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


def classify_failure(status, http_status=None, name_not_found=False):
    """A failed check -> GONE (the image is not there) or TRANSIENT (could not tell tonight)."""
    if status == schema.HTTP_ERROR:
        return GONE if http_status in GONE_HTTP_STATUSES else TRANSIENT
    if status == schema.CONNECTION_ERROR:
        return GONE if name_not_found else TRANSIENT
    if status in (schema.BLOCKED, schema.INVALID_URL, schema.OPTED_OUT, schema.NOT_IMAGE):
        return GONE
    return TRANSIENT  # timeout, too_large, decode_error


def known_url_placeholder(final_url, url=None):
    """What placeholder the redirect target `final_url` of `url` is, or None."""
    try:
        parts = urllib.parse.urlsplit(final_url or "")
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    for suffix, pattern, what in KNOWN_PLACEHOLDER_URLS:
        if (host == suffix or host.endswith("." + suffix)) and pattern.search(parts.path):
            return f"the {what} picture"
    redirected = url is not None and (final_url or "").strip() != (url or "").strip()
    if redirected and PLACEHOLDER_FILE_NAME.search(parts.path):
        return "a picture named like a placeholder"
    return None


def placeholder_reason(sha256, phash, final_url, detected, params, url=None):
    """Why tonight's picture is a placeholder, or None. `detected`: {sha256: n} of the many-URLs rule."""
    if sha256 and sha256 in params.placeholder_sha256:
        return f"known placeholder picture (sha256 {sha256[:12]}...)"
    if phash and phash in params.placeholder_phash:
        names = [p.name for p in KNOWN_PLACEHOLDERS if p.phash == phash]
        return f"{names[0] if names else 'known placeholder'} (pHash {phash})"
    what = known_url_placeholder(final_url, url)
    if what:
        return f"redirected to {what} ({final_url})"
    if sha256 and detected and sha256 in detected:
        return f"placeholder: the same picture replaced {detected[sha256]} different pictures tonight"
    return None


def same_picture(entry, sha256, phash, params):
    """(same, bytes_changed, distance) of tonight's picture against the snapshot's."""
    if sha256 == entry["sha256"]:
        return True, False, 0
    distance = phash_distance(phash, entry["phash"])
    return distance is not None and distance <= params.max_distance, True, distance


def placeholder_votes(entries, check, params):
    """The many-URLs rule. A URL votes (tonight's sha256, its snapshot sha256, redirected) when it
    served a readable picture other than the one the snapshot holds for it. A picture that
    *redirected* URLs were sent to in place of at least --placeholder-min-urls different snapshot
    pictures is a placeholder (Flickr's 'photo unavailable', a host's 'image removed' banner);
    mirrors of one photo updated alike count once. Votes without a redirect only feed the summary's
    list of frequent replacement pictures (a placeholder served in place shows up there)."""
    if check.get("image_status") != schema.OK or not check.get("sha256"):
        return []
    url = (entries[0].get("url") or "").strip() if entries else ""
    redirected = bool(check.get("final_url")) and check["final_url"].strip() != url
    for entry in entries:
        if has_baseline(entry) and not same_picture(entry, check["sha256"], check["phash"], params)[0]:
            return [(check["sha256"], entry["sha256"], redirected)]
    return []


def observe(entry, check, detected, params):
    """What tonight's check says about one key, before the history rules."""
    obs = {"kind": None, "failure": None, "reason": None, "sha256": None, "phash": None,
           "bytes_changed": None, "phash_distance": None, "placeholder": False}

    def failed(kind, reason):
        obs.update(kind="failed", failure=kind, reason=reason)
        return obs

    if check["method"] == NOT_CHECKED:
        detail = f" ({entry.get('ingest_error')})" if entry.get("ingest_error") else ""
        return failed(UNFETCHABLE, f"not re-checked: {entry.get('ingest_status')} at ingest{detail}")
    if check["status"] != schema.OK:
        kind = classify_failure(check["status"], check.get("http_status"), check.get("name_not_found"))
        return failed(kind, check.get("error") or check["status"])
    if check["not_modified"]:
        sha256, phash = check.get("validated_sha256") or entry.get("sha256"), check.get("validated_phash") or entry.get("phash")
        how = "file unchanged (same size)" if check["method"] == FILE else "304 Not Modified"
    else:
        if check.get("image_status") == schema.NOT_IMAGE:
            return failed(GONE, f"soft 404: serves {check.get('content_type') or 'no Content-Type'}, not an image")
        if check.get("image_status") != schema.OK:
            return failed(TRANSIENT, f"picture unreadable: {check.get('image_error')}")
        sha256, phash, how = check["sha256"], check["phash"], None
    obs.update(sha256=sha256, phash=phash)
    why = placeholder_reason(sha256, phash, check.get("final_url"), detected, params, entry.get("url"))
    if why:
        obs["placeholder"] = True
        return failed(GONE, why)
    if not has_baseline(entry):
        obs.update(kind="new", reason=(how or "serves a picture") + "; the snapshot has none to compare with")
        return obs
    same, bytes_changed, distance = same_picture(entry, sha256, phash, params)
    if same and entry.get("is_placeholder"):
        obs["placeholder"] = True
        return failed(GONE, "the snapshot already judged this picture a placeholder (is_placeholder)")
    obs.update(bytes_changed=bytes_changed if same else None, phash_distance=distance)
    if how and sha256 == entry["sha256"]:
        obs.update(kind="same", reason=how)
    elif same:
        obs.update(kind="same", reason="same bytes" if not bytes_changed else
                   f"same picture, other bytes: pHash distance {distance} <= {params.max_distance}")
    else:
        obs.update(kind="changed", reason=f"another picture: pHash distance {distance} > {params.max_distance}")
    return obs


def verdict_of(kind, failure, consecutive_failures, params, previous_status=None):
    """The night's verdict from the observation, the failure streak (tonight included) and last
    night's verdict: a dead URL stays dead while it keeps failing, whatever the failure."""
    if kind in ("same", "new"):
        return ALIVE
    if kind == "changed":
        return CHANGED
    if failure == UNFETCHABLE or previous_status == DEAD:
        return DEAD
    if failure == GONE and consecutive_failures >= max(params.dead_after, 1):
        return DEAD
    if params.unreachable_dead_after and consecutive_failures >= params.unreachable_dead_after:
        return DEAD
    return UNREACHABLE


def judge(entry, check, previous, detected, params):
    """One status row: a snapshot key, tonight's check of its URL, and its latest history row (or None)."""
    obs = observe(entry, check, detected, params)
    failed = obs["kind"] == "failed"
    consecutive = ((previous or {}).get("consecutive_failures") or 0) + 1 if failed else 0
    previous_status = (previous or {}).get("status")
    verdict = verdict_of(obs["kind"], obs["failure"], consecutive, params, previous_status)
    reason = obs["reason"]
    if failed and verdict == UNREACHABLE and obs["failure"] == GONE:
        reason += f" (failed {consecutive} night(s) in a row; dead after {params.dead_after})"
    elif failed and verdict == DEAD and obs["failure"] == TRANSIENT:
        reason += (" (dead since an earlier night, still failing)" if previous_status == DEAD else
                   f" (failed {consecutive} nights in a row; dead after {params.unreachable_dead_after})")
    before = previous_status or ingest_verdict(entry)
    dead_since = None
    if verdict == DEAD:
        dead_since = previous.get("dead_since") if previous and previous_status == DEAD else None
        dead_since = dead_since or params.night
    return {
        "night": params.night, "dataset": entry.get("dataset"), "key": entry.get("key"), "url": entry.get("url"),
        "host": entry.get("host"), "status": verdict, "http_status": check.get("http_status"),
        "checked_at": check.get("checked_at"), "sha256": obs["sha256"], "phash": obs["phash"],
        "error": reason if verdict in (UNREACHABLE, DEAD) else None, "reason": reason,
        "method": check["method"], "requests": check.get("requests") or 0, "failure": obs["failure"],
        "bytes_changed": obs["bytes_changed"], "phash_distance": obs["phash_distance"],
        "placeholder": obs["placeholder"], "final_url": check.get("final_url"),
        "consecutive_failures": consecutive,
        "previous_nights": ((previous.get("previous_nights") or 0) + 1) if previous else 0,
        "previous_status": previous_status,
        "newly_dead": verdict == DEAD and before != DEAD,
        "revived": verdict in (ALIVE, CHANGED) and before == DEAD,
        "dead_since": dead_since,
        "ingest_status": entry.get("ingest_status"), "ingest_sha256": entry.get("sha256"),
        "ingest_phash": entry.get("phash"), "ingest_fetched_at": entry.get("fetched_at"),
        "snapshot": entry.get("snapshot"),
    }


# ---- Beam: snapshot -> checks -> verdicts -------------------------------------------------------------

class ReadSnapshots(beam.PTransform):
    """Snapshot Parquet files -> one entry per key (a key in several snapshots: see entry_rank)."""

    def __init__(self, patterns):
        super().__init__()
        # [(label, file pattern, columns)]; columns None: looked up in the files (snapshot_columns)
        self._patterns = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in patterns]

    def expand(self, pbegin):
        parts = []
        for order, (label, pattern, columns) in enumerate(self._patterns):
            parts.append(
                pbegin
                | f"Read{order}" >> beam.io.ReadFromParquet(pattern, columns=columns or snapshot_columns(pattern))
                | f"Entries{order}" >> beam.Map(snapshot_entry, label, order))
        return (
            parts | "AllSnapshots" >> beam.Flatten()
            | "ByKey" >> beam.Map(lambda e: (e["key"], e))
            | "OnePerKey" >> beam.CombinePerKey(best_entry)
            | "Entry" >> beam.Values()
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
        self._methods = {m: beam.metrics.Metrics.counter("refresh", f"method_{m}")
                         for m in (NOT_CHECKED, CONDITIONAL, HEAD, HEAD_GET, GET, FILE)}
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
    """Checked URLs + last night's history rows (key, row) -> one status row per key."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def expand(self, inputs):
        checked, previous, placeholders = inputs["checked"], inputs["previous"], inputs["placeholders"]
        params = self._params
        per_key = checked | "PerKey" >> beam.FlatMap(
            lambda item: [(e["key"], (e, item["check"])) for e in item["entries"]])
        return (
            {"now": per_key, "previous": previous}
            | "WithHistory" >> beam.CoGroupByKey()
            | "Verdicts" >> beam.FlatMap(_judge_joined, beam.pvalue.AsDict(placeholders), params)
        )


def _judge_joined(item, detected, params):
    _key, grouped = item
    previous = next(iter(grouped["previous"]), None)
    for entry, check in grouped["now"]:
        yield judge(entry, check, previous, detected, params)


# ---- history: one directory per night ------------------------------------------------------------------

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


class WriteStatusTable(beam.PTransform):
    """Status rows -> <directory>/part-*.parquet; returns the written file names."""

    def __init__(self, directory):
        super().__init__()
        self._directory = directory

    def expand(self, rows):
        return (
            rows
            | "Columns" >> beam.Map(lambda row: {name: row.get(name) for name in schema.REFRESH_COLUMNS})
            | "Parquet" >> beam.io.WriteToParquet(join_path(self._directory, "part"), schema.REFRESH_SCHEMA,
                                                  file_name_suffix=".parquet", record_batch_size=1000)
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


# ---- summary -------------------------------------------------------------------------------------------

def months_between(fetched_at, night):
    """Months from the ingest fetch to the end of `night` (UTC), never negative."""
    if fetched_at is None:
        return None
    if fetched_at.tzinfo is None:
        fetched_at = fetched_at.replace(tzinfo=datetime.timezone.utc)
    end = datetime.datetime.combine(night + datetime.timedelta(days=1), datetime.time(0),
                                    tzinfo=datetime.timezone.utc)
    return max((end - fetched_at).total_seconds(), 0.0) / 86400.0 / DAYS_PER_MONTH


def link_rot(alive_at_ingest, dead_now, months_sum):
    """Link rot per month: the fraction of keys alive at ingest (a picture in the snapshot) that are
    dead tonight, divided by the mean months since their ingest fetch. None under a day."""
    if not alive_at_ingest:
        return {"alive_at_ingest": 0, "dead_now": 0, "dead_fraction": None, "mean_months": None, "per_month": None}
    fraction = dead_now / alive_at_ingest
    months = months_sum / alive_at_ingest
    return {"alive_at_ingest": alive_at_ingest, "dead_now": dead_now, "dead_fraction": round(fraction, 6),
            "mean_months": round(months, 4),
            "per_month": round(fraction / months, 6) if months >= 1 / DAYS_PER_MONTH else None}


class RefreshTotals(beam.CombineFn):
    """Status rows -> counts by dataset x verdict, the night's flags, and link-rot sums per dataset."""

    def create_accumulator(self):
        return {"counts": {}, "flags": collections.Counter(), "methods": collections.Counter(), "rot": {}}

    def add_input(self, acc, row):
        per = acc["counts"].setdefault(row["dataset"], {})
        per[row["status"]] = per.get(row["status"], 0) + 1
        flags = acc["flags"]
        flags["newly_dead"] += bool(row["newly_dead"])
        flags["revived"] += bool(row["revived"])
        flags["newly_changed"] += row["status"] == CHANGED and row.get("previous_status") != CHANGED
        flags["bytes_changed"] += row["status"] == ALIVE and bool(row["bytes_changed"])
        flags["placeholder"] += bool(row["placeholder"])
        acc["methods"][row["method"]] += 1
        if row.get("ingest_status") in BASELINE_STATUSES:
            rot = acc["rot"].setdefault(row["dataset"], [0, 0, 0.0])
            rot[0] += 1
            rot[1] += row["status"] == DEAD
            rot[2] += months_between(row.get("ingest_fetched_at"), row["night"]) or 0.0
        return acc

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            for dataset, per in acc["counts"].items():
                mine = out["counts"].setdefault(dataset, {})
                for status, n in per.items():
                    mine[status] = mine.get(status, 0) + n
            out["flags"].update(acc["flags"])
            out["methods"].update(acc["methods"])
            for dataset, (n, dead, months) in acc["rot"].items():
                rot = out["rot"].setdefault(dataset, [0, 0, 0.0])
                rot[0] += n
                rot[1] += dead
                rot[2] += months
        return out

    def extract_output(self, acc):
        return {"counts": acc["counts"], "flags": dict(acc["flags"]), "methods": dict(acc["methods"]),
                "rot": acc["rot"]}


def host_counts(row):
    return row["host"] or "(no host)", tuple(int(row["status"] == v) for v in VERDICTS)


def host_record(host, counts):
    record = {"host": host, "rows": sum(counts)}
    record.update(zip(VERDICTS, counts))
    record["success_rate"] = round(record[ALIVE] / record["rows"], 6) if record["rows"] else None
    return record


def _sum_tuples(tuples):
    total = None
    for t in tuples:
        total = t if total is None else tuple(a + b for a, b in zip(total, t))
    return total or (0,) * len(VERDICTS)


class HostTable(beam.PTransform):
    """Status rows -> one record per host: rows, one count per verdict, success rate."""

    def expand(self, rows):
        return (
            rows
            | "HostCounts" >> beam.Map(host_counts)
            | "SumPerHost" >> beam.CombinePerKey(_sum_tuples)
            | "Record" >> beam.MapTuple(host_record)
        )


HOST_SCHEMA = pa.schema([("host", pa.string()), ("rows", pa.int64())] + [(v, pa.int64()) for v in VERDICTS]
                        + [("success_rate", pa.float64())])


class WriteHostTable(beam.PTransform):
    """Host records -> <directory>/part-*.parquet (the by-host figures, all hosts)."""

    def __init__(self, directory):
        super().__init__()
        self._directory = directory

    def expand(self, records):
        return records | "Parquet" >> beam.io.WriteToParquet(
            join_path(self._directory, "part"), HOST_SCHEMA, file_name_suffix=".parquet", record_batch_size=1000)


def url_stats(checked):
    check = checked["check"]
    return {"urls": 1, "requests": check.get("requests") or 0, f"urls_{check['method']}": 1}


def _add_counts(dicts):
    total = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def build_refresh_summary(totals, top_hosts, host_count, urls, placeholders, frequent, night, previous,
                          started_at, finished_at, options=None):
    """summary.json of a refresh night (README.md, "Nightly refresh", "summary.json")."""
    counts = totals["counts"]
    verdict_totals = {v: sum(per.get(v, 0) for per in counts.values()) for v in VERDICTS}
    rows = sum(verdict_totals.values())

    def rates(per):
        n = sum(per.values())
        return {"rows": n, "success_rate": round(per.get(ALIVE, 0) / n, 6) if n else None,
                "reachable_rate": round((per.get(ALIVE, 0) + per.get(CHANGED, 0)) / n, 6) if n else None}

    rot = totals["rot"]
    all_rot = [sum(v[i] for v in rot.values()) for i in range(3)] if rot else [0, 0, 0.0]
    flags = totals["flags"]
    ranked = sorted(top_hosts, key=lambda h: (-h["rows"], h["host"]))
    elapsed = max(finished_at - started_at, 1e-9)
    return {
        "job": "refresh",
        "night": night.isoformat(),
        "previous_night": previous.isoformat() if previous else None,
        "rows": rows,
        "counts": counts,
        "verdict_totals": verdict_totals,
        "newly_dead": flags.get("newly_dead", 0),
        "revived": flags.get("revived", 0),
        "changed": verdict_totals[CHANGED],
        "newly_changed": flags.get("newly_changed", 0),
        "bytes_changed": flags.get("bytes_changed", 0),
        "placeholder_rows": flags.get("placeholder", 0),
        "methods": dict(sorted(totals["methods"].items())),
        "urls": dict(sorted(urls.items())),
        "success_rate": dict(rates(verdict_totals),
                             by_dataset={d: rates(per) for d, per in sorted(counts.items())}),
        "by_host": {"hosts": host_count, "top": ranked},
        "link_rot": dict(link_rot(*all_rot), by_dataset={d: link_rot(*v) for d, v in sorted(rot.items())}),
        "placeholders_detected": [{"sha256": sha, "replaced_pictures": n}
                                  for sha, n in sorted(placeholders, key=lambda p: (-p[1], p[0]))],
        "frequent_replacements": [{"sha256": sha, "replaced_pictures": n}
                                  for sha, n in sorted(frequent, key=lambda p: (-p[1], p[0]))],
        "timings": {"started_at": datetime.datetime.fromtimestamp(started_at, datetime.timezone.utc)
                    .strftime("%Y-%m-%dT%H:%M:%SZ"), "wall_seconds": round(elapsed, 3),
                    "rows_per_second": round(rows / elapsed, 2)},
        "options": options or {},
    }


class SummarizeRefresh(beam.PTransform):
    """Status rows (+ checked URLs, host records, detected placeholders) -> REFRESH_OUT/summary.json,
    written once the status files are final."""

    def __init__(self, out_dir, night, previous, started_at, top_hosts=100, options=None):
        super().__init__()
        self._out_dir, self._night, self._previous = out_dir, night, previous
        self._started_at, self._top_hosts, self._options = started_at, top_hosts, options

    def expand(self, inputs):
        rows, checked, hosts = inputs["rows"], inputs["checked"], inputs["hosts"]
        placeholders, frequent, written = inputs["placeholders"], inputs["frequent"], inputs["written"]
        totals = rows | "Totals" >> beam.CombineGlobally(RefreshTotals())
        urls = (checked | "UrlStats" >> beam.Map(url_stats)
                | "SumUrlStats" >> beam.CombineGlobally(_add_counts))
        # Only the top hosts reach the single summary writer: there can be hundreds of thousands.
        top = hosts | "TopHosts" >> beam.combiners.Top.Of(self._top_hosts, key=lambda h: (h["rows"], h["host"]))
        host_count = hosts | "CountHosts" >> beam.combiners.Count.Globally()
        path = join_path(self._out_dir, "summary.json")
        night, previous, started_at, options = self._night, self._previous, self._started_at, self._options

        def write(_, totals, top, host_count, urls, placeholders, frequent, written):
            summary = build_refresh_summary(totals, top, host_count, urls, placeholders, frequent, night, previous,
                                            started_at, time.time(), options)
            summary["written"] = sorted(f.split("/")[-1] for f in written)
            return write_json(path, summary)

        return (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(write, totals=beam.pvalue.AsSingleton(totals), top=beam.pvalue.AsSingleton(top),
                                  host_count=beam.pvalue.AsSingleton(host_count),
                                  urls=beam.pvalue.AsSingleton(urls),
                                  placeholders=beam.pvalue.AsList(placeholders),
                                  frequent=beam.pvalue.AsSingleton(frequent),
                                  written=beam.pvalue.AsList(written))
        )
