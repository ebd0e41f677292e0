"""The refresh's rules, as pure functions over plain dicts: what tonight's check of a URL says about
each snapshot key, and the night's verdict given the key's history.

One verdict per snapshot key and night (docs/refresh.md has the full rules):

    alive        the same picture (same bytes, or re-encoded bytes within --max-distance of pHash)
    changed      another picture
    unreachable  timeout, 5xx, connection failure, ... : maybe temporary
    dead         404/410/451, DNS name gone, a placeholder picture, a soft 404, an opt-out;
                 after --dead-after failed nights in a row

Siblings in this package: `plans` (how one URL is checked, cheapest first), `checks` (the Beam
stages), `history` (one directory per night) and `summary` (summary.json).
"""

import dataclasses
import datetime
import hashlib
import re
import urllib.parse
from typing import Any

import imagehash

from transforms import schema
from transforms.clustering.placeholders import KNOWN_PLACEHOLDERS
from transforms.image_checks import DEFAULT_MAX_PIXELS

__all__ = [
    "MAX_SAME_PICTURE_DISTANCE",
    "too_wide",
    "ALIVE",
    "CHANGED",
    "UNREACHABLE",
    "DEAD",
    "VERDICTS",
    "GONE",
    "TRANSIENT",
    "UNFETCHABLE",
    "NOT_CHECKED",
    "CONDITIONAL",
    "HEAD",
    "HEAD_GET",
    "GET",
    "FILE",
    "GONE_HTTP_STATUSES",
    "EMPTY_SHA256",
    "HEAD_REFUSED",
    "BASELINE_STATUSES",
    "NOT_RECHECKED",
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_DEAD_AFTER",
    "DEFAULT_UNREACHABLE_DEAD_AFTER",
    "DEFAULT_PLACEHOLDER_MIN_URLS",
    "KNOWN_PLACEHOLDER_URLS",
    "PLACEHOLDER_FILE_NAME",
    "RefreshParams",
    "parse_placeholder",
    "utc_today",
    "parse_night",
    "host_of",
    "is_http",
    "snapshot_entry",
    "has_baseline",
    "EPOCH",
    "entry_rank",
    "best_entry",
    "url_group",
    "ingest_failure",
    "ingest_night",
    "fetched_on_or_after",
    "claims_image",
    "has_undecodable_baseline",
    "NO_HOST",
    "DEFAULT_HOST_DEAD_AFTER",
    "phash_distance",
    "classify_failure",
    "known_url_placeholder",
    "placeholder_reason",
    "same_picture",
    "placeholder_votes",
    "soft_404_page",
    "gone_answer_page",
    "WALL_REASON",
    "utc_date",
    "observe",
    "streak_after",
    "verdict_of",
    "judge",
]


ALIVE = "alive"
CHANGED = "changed"
UNREACHABLE = "unreachable"
DEAD = "dead"
VERDICTS = (ALIVE, CHANGED, UNREACHABLE, DEAD)

# Kinds of failed check (docs/refresh.md, "Verdicts": which are evidence, after how many nights).
GONE = "gone"  # the server says the image is not there: 404/410/451, a placeholder, a soft 404
NO_HOST = "no_host"  # DNS says the name does not exist, or the host refuses connections
TRANSIENT = "transient"  # could not tell tonight: timeout, 5xx, 403, 429, reset, unreadable listing, ...
UNFETCHABLE = "unfetchable"  # never requested: the snapshot row's URL is invalid or refused

# How a URL was checked.
NOT_CHECKED = "none"
CONDITIONAL = "conditional"  # GET with If-None-Match / If-Modified-Since
HEAD = "head"  # HEAD alone settled it
HEAD_GET = "head+get"
GET = "get"
FILE = "file"  # a file row (ImageNet): looked up through Beam's filesystems

GONE_HTTP_STATUSES = frozenset({404, 410, 451})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # a 2xx with no body: tells nothing about the picture
HEAD_REFUSED = frozenset({405, 501})
BASELINE_STATUSES = frozenset({schema.OK, schema.HASH_MISMATCH})  # rows whose picture was hashed
NOT_RECHECKED = frozenset({schema.INVALID_URL, schema.BLOCKED})
DEFAULT_MAX_DISTANCE = 6  # same picture at or under this pHash distance (docs/refresh.md)
# why a cap: wider, different pictures pass as the snapshot's (a replaced photo "alive", never
# "changed"); 12 is also the dedup job's widest near-duplicate distance
MAX_SAME_PICTURE_DISTANCE = 12


def too_wide(max_distance: int) -> str:
    """The one line refusing a --max-distance out of 0..MAX_SAME_PICTURE_DISTANCE.

    Args:
        max_distance: the value given.
    Returns:
        The message.
    """
    return (
        f"--max-distance must be between 0 and {MAX_SAME_PICTURE_DISTANCE}, got {max_distance}: wider, a"
        " different picture at the URL passes as the snapshot's (alive, never changed)"
    )


DEFAULT_DEAD_AFTER = 2  # nights of 'gone' answers (docs/refresh.md, "Why these defaults")
DEFAULT_HOST_DEAD_AFTER = 4  # nights of 'no such name' / 'connection refused'
DEFAULT_UNREACHABLE_DEAD_AFTER = 30
DEFAULT_PLACEHOLDER_MIN_URLS = 3


# (host suffix, path pattern, what): where hosts send requests for images they no longer serve.
KNOWN_PLACEHOLDER_URLS = (
    ("yimg.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("flickr.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("staticflickr.com", re.compile(r"/photo_unavailable[^/]*$"), "Flickr 'photo unavailable'"),
    ("imgur.com", re.compile(r"^/removed\.(?:png|jpg|gif)$"), "Imgur 'removed'"),
)

# Any host: a redirect whose target file is named like a placeholder ("photo_unavailable.png",
# "no-image.gif", "placeholder.jpg", ...). Only after a redirect: a photo's own URL may say anything.
# The word starts the file name or follows a "-", "_" or ".": inside a word it is a photo's slug
# ("piano-image.jpg", "casino_photo.jpg"), which a redirect to the photo's own page gives.
PLACEHOLDER_FILE_NAME = re.compile(
    r"(?:^|/|[^/]*[-_.])(?:unavailable|placeholder|no[-_]?image|no[-_]?photo|not[-_]?found|removed)"
    r"[^/]*\.(?:png|jpe?g|gif|webp)$",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class RefreshParams:
    night: datetime.date
    max_distance: int = DEFAULT_MAX_DISTANCE
    dead_after: int = DEFAULT_DEAD_AFTER
    host_dead_after: int = DEFAULT_HOST_DEAD_AFTER
    unreachable_dead_after: int = DEFAULT_UNREACHABLE_DEAD_AFTER  # 0: never
    placeholder_min_urls: int = DEFAULT_PLACEHOLDER_MIN_URLS  # 0: no many-URLs rule
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


def utc_today() -> datetime.date:
    """Today's date in UTC: the default --night, and the latest night but one a run may judge."""
    return datetime.datetime.now(datetime.timezone.utc).date()


def parse_night(value: str | None, today: datetime.date | None = None) -> datetime.date:
    """--night YYYY-MM-DD (default: today, UTC), at most a day after today.

    Args:
        value: the --night value, or None.
        today: today's date (default: utc_today()).
    Returns:
        the night.
    Raises:
        ValueError: not a date, or more than a day after today: a night not yet come sorts after
            every real night of --history (why one day: a schedule east of UTC may name tomorrow).
    """
    today = today or utc_today()
    if value is None:
        return today
    try:
        night = datetime.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"--night takes YYYY-MM-DD, got {value!r}") from None
    if night > today + datetime.timedelta(days=1):
        raise ValueError(
            f"--night {night.isoformat()} is more than a day after today ({today.isoformat()}, UTC): give the"
            " night being judged (default: today)"
        )
    return night


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
        "key": row.get("key"),
        "dataset": row.get("dataset"),
        "url": url,
        "host": host_of(url) if is_http(url) else None,
        "ingest_status": row.get("status"),
        "ingest_http_status": row.get("http_status"),
        "ingest_error": row.get("error"),
        "sha256": row.get("sha256"),
        "phash": row.get("phash"),
        "etag": row.get("etag"),
        "last_modified": row.get("last_modified"),
        "size_bytes": row.get("size_bytes"),
        "ingest_content_type": row.get("content_type"),
        "fetched_at": row.get("fetched_at"),
        "is_placeholder": bool(row.get("is_placeholder")),
        "snapshot": snapshot,
        "order": order,
    }


def claims_image(content_type: str | None) -> bool:
    """The Content-Type says a picture (image/*), whether or not we can decode that format."""
    return (content_type or "").strip().lower().startswith("image/")


def has_undecodable_baseline(entry: dict) -> bool:
    """The snapshot holds this key's bytes but could not decode them (SVG, HEIC, ...: `not_image` at
    ingest with an image/* Content-Type): unchanged bytes are alive, with the picture not checked."""
    return (
        entry.get("ingest_status") == schema.NOT_IMAGE
        and bool(entry.get("sha256"))
        and claims_image(entry.get("ingest_content_type"))
    )


def has_baseline(entry):
    """The snapshot holds this key's picture: the refresh compares against it."""
    return entry.get("ingest_status") in BASELINE_STATUSES and bool(entry.get("sha256")) and bool(entry.get("phash"))


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def entry_rank(entry):
    """A key in several snapshots: the one with a picture, then the latest fetch, then the first snapshot."""
    return has_baseline(entry), entry.get("fetched_at") or EPOCH, -entry.get("order", 0), entry.get("url") or ""


def best_entry(entries):
    return max(entries, key=entry_rank)


def url_group(entry):
    """One check per distinct URL as the snapshot wrote it; URL-less rows stay alone."""
    url = (entry.get("url") or "").strip()
    return url if url else "\0" + str(entry.get("key"))


def ingest_failure(entry: dict) -> str | None:
    """What the ingest fetch of a key observed, as a failure kind; None when it served the picture
    (or bytes we keep as the picture, see has_undecodable_baseline)."""
    status = entry.get("ingest_status")
    if status in BASELINE_STATUSES or has_undecodable_baseline(entry):
        return None
    if status in NOT_RECHECKED:
        return UNFETCHABLE
    if status == schema.HTTP_ERROR and entry.get("ingest_http_status") in GONE_HTTP_STATUSES:
        return GONE
    if status in (schema.OPTED_OUT, schema.NOT_IMAGE):
        return GONE
    return TRANSIENT


def ingest_night(entry: dict, params: RefreshParams) -> dict:
    """The ingest fetch judged as the night before a key's first refresh night (docs/refresh.md,
    "The first night"): the same rules as any night, with a streak of one if it failed.

    Args:
        entry: the key's snapshot entry (snapshot_entry()).
        params: the night's RefreshParams (the same --dead-after applies to the ingest fetch).
    Returns:
        {"status": verdict, "consecutive_failures", "gone_failures", "evidence_failures": 0 or 1},
        a stand-in for a history row.
    """
    failure = ingest_failure(entry)
    if failure != UNFETCHABLE and fetched_on_or_after(entry.get("fetched_at"), params.night):
        # why: fetched on the night's own date (an ingest and a refresh scheduled the same day), the
        # ingest's answer and tonight's are one night's: counted as two, a URL 404 at both, minutes
        # apart, was dead on its first night with --dead-after 2, which promises two nights
        failure = None
    streak = streak_after(None, failure)
    status = ALIVE if failure is None else verdict_of("failed", failure, streak, params)
    return {"status": status, **streak}


def fetched_on_or_after(fetched_at: datetime.datetime | None, night: datetime.date) -> bool:
    """Whether an ingest fetch's UTC date is `night` or later (then it is no night before `night`).

    Args:
        fetched_at: the snapshot row's fetched_at (naive: UTC), or None (unknown: an earlier night).
        night: the night judged.
    Returns:
        True when fetched on that date or after.
    """
    return fetched_at is not None and utc_date(fetched_at) >= night


def utc_date(when: datetime.datetime) -> datetime.date:
    """The UTC date of a timestamp read from a table (naive: already UTC).

    Args:
        when: a `fetched_at` or another table timestamp.
    Returns:
        Its date in UTC.
    """
    return (when.astimezone(datetime.timezone.utc) if when.tzinfo is not None else when).date()


# ---- verdicts ---------------------------------------------------------------------------------------


def phash_distance(a, b):
    if not a or not b:
        return None
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


def classify_failure(
    status: str, http_status: int | None = None, name_not_found: bool = False, refused: bool = False
) -> str:
    """A failed check -> its kind: GONE (the server says the image is not there), NO_HOST (no such
    name, connection refused: evidence, but slower to trust) or TRANSIENT (could not tell tonight).

    Args:
        status: the check's row status (schema.HTTP_ERROR, schema.TIMEOUT, ...).
        http_status: the last HTTP status, if any.
        name_not_found: DNS said the name does not exist (not a failed lookup).
        refused: the host refused the TCP connection.
    Returns:
        GONE, NO_HOST or TRANSIENT.
    """
    if status == schema.HTTP_ERROR:
        return GONE if http_status in GONE_HTTP_STATUSES else TRANSIENT  # 403, 429, 5xx: transient
    if status == schema.CONNECTION_ERROR:
        return NO_HOST if (name_not_found or refused) else TRANSIENT  # resets, TLS, cut bodies
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
    name = parts.path.rsplit("/", 1)[-1]
    # why: a redirect to the URL's own file name (http -> https, a CDN host) is the photo's own name
    if redirected and PLACEHOLDER_FILE_NAME.search("/" + name) and name != _file_name(url):
        return "a picture named like a placeholder"
    return None


def _file_name(url):
    try:
        return urllib.parse.urlsplit((url or "").strip()).path.rsplit("/", 1)[-1]
    except ValueError:
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


def soft_404_page(check: dict) -> str | None:
    """The shape of the page a check got instead of a picture (a soft 404: a 2xx with a body that is
    neither an image by Content-Type nor by its first bytes), or None.

    Args:
        check: tonight's check of a URL.
    Returns:
        the page's shape (host_outages.page_shape: its text up to numbers and ids), or its sha256
        for a check made without one; None when the check is no soft 404.
    """
    if check.get("status") != schema.OK or check.get("not_modified") or check.get("sha256") == EMPTY_SHA256:
        return None
    if check.get("image_status") == schema.NOT_IMAGE and not check.get("image_like"):
        return check.get("page_shape") or check.get("sha256")
    return None


def gone_answer_page(check: dict) -> str | None:
    """The name a 404/410/451 answer is counted under among a host's pages ("http:404"), or None.

    Args:
        check: tonight's check of a URL.
    Returns:
        "http:<status>" for a 'gone' HTTP answer, else None.
    """
    if check.get("status") == schema.HTTP_ERROR and check.get("http_status") in GONE_HTTP_STATUSES:
        return f"http:{check['http_status']}"
    return None


WALL_REASON = "wall: "  # starts the reason of a soft 404 that several hosts served tonight (walls.py)


def observe(
    entry: dict,
    check: dict,
    detected: dict,
    params: RefreshParams,
    outages: dict | None = None,
    walls: dict | None = None,
) -> dict:
    """What tonight's check says about one key, before the history rules.

    Args:
        entry: the key's snapshot entry (snapshot_entry()).
        check: tonight's check of its URL (plans.finish_check(), plans.check_file()).
        detected: {sha256: n} of the many-URLs placeholder rule.
        params: the night's settings.
        outages: {(host, page shape or redirect page): (URLs served it, URLs of the host checked, a sha256 of it)}
            of the hosts that served one page to most of their URLs tonight (host_outages.FindHostOutages).
        walls: {page shape or redirect page: (hosts that served it, URLs, a sha256 of it)} of the
            pages several hosts served tonight in place of pictures (walls.FindWalls).
    Returns:
        {"kind": "same" | "new" | "unchecked" | "changed" | "failed", "failure", "reason", "sha256",
        "phash", "bytes_changed", "phash_distance", "placeholder", "picture_unchecked"}.
    """
    obs: dict[str, Any] = {
        "kind": None,
        "failure": None,
        "reason": None,
        "sha256": None,
        "phash": None,
        "bytes_changed": None,
        "phash_distance": None,
        "placeholder": False,
        "picture_unchecked": False,
    }
    outage_pages = outages or {}

    def failed(kind, reason):
        obs.update(kind="failed", failure=kind, reason=reason)
        return obs

    def unchecked(sha256, how):  # live, the bytes vouched for, but nothing to decode and compare
        what = entry.get("ingest_content_type") or check.get("content_type") or "this format"
        obs.update(
            kind="unchecked",
            sha256=sha256,
            picture_unchecked=True,
            reason=f"{how}; the picture was not checked (cannot decode {what})",
        )
        return obs

    if check["method"] == NOT_CHECKED:
        detail = f" ({entry.get('ingest_error')})" if entry.get("ingest_error") else ""
        return failed(UNFETCHABLE, f"not re-checked: {entry.get('ingest_status')} at ingest{detail}")
    if check["status"] != schema.OK:
        kind = classify_failure(
            check["status"], check.get("http_status"), bool(check.get("name_not_found")), bool(check.get("refused"))
        )
        outage = outage_pages.get((entry.get("host"), gone_answer_page(check)))
        if kind == GONE and outage:
            # why: a host answering 404 to most of its URLs at once is the host (a deploy that broke
            # every path, a misrouted vhost), not each picture gone: --host-dead-after, not --dead-after
            return failed(
                NO_HOST,
                f"host outage: answers HTTP {check.get('http_status')} to {outage[0]} of its {outage[1]}"
                " URLs checked tonight",
            )
        return failed(kind, check.get("error") or check["status"])
    if check["not_modified"]:
        sha256, phash = (
            check.get("validated_sha256") or entry.get("sha256"),
            check.get("validated_phash") or entry.get("phash"),
        )
        how = "file unchanged (same size)" if check["method"] == FILE else "304 Not Modified"
        if not phash and has_undecodable_baseline(entry):
            return unchecked(sha256, how)
    else:
        if check.get("sha256") == EMPTY_SHA256:  # no page saying "not found": a cache or origin in a bad state
            return failed(TRANSIENT, f"empty answer: HTTP {check.get('http_status')} with no body")
        if (
            check.get("image_status") != schema.OK
            and check.get("image_like")
            and check.get("sha256")
            and check["sha256"] == entry.get("sha256")
        ):  # an SVG, a HEIC...: not the same HTML page
            return unchecked(check["sha256"], "same bytes as the snapshot")
        if check.get("image_status") == schema.NOT_IMAGE and not check.get("image_like"):
            served = check.get("content_type") or "no Content-Type"
            wall = (walls or {}).get(soft_404_page(check)) or (walls or {}).get(check.get("redirect_page"))
            if wall:
                # why before the host outage: a page that several hosts serve is not theirs (a CDN's
                # bot challenge, a consent wall): it tells nothing about the picture nor the host
                return failed(
                    TRANSIENT,
                    f"{WALL_REASON}the same page ({served}) served tonight by {wall[0]} hosts in place of"
                    " pictures (a bot, consent or CDN wall), not the picture's removal",
                )
            outage = outage_pages.get((entry.get("host"), soft_404_page(check))) or outage_pages.get(
                (entry.get("host"), check.get("redirect_page"))
            )
            if outage:
                # why: one page for most URLs of a host is the host down (maintenance, parking),
                # not each URL gone: evidence about the host (--host-dead-after), not 'gone'
                return failed(
                    NO_HOST,
                    f"host outage: serves one same page ({served}) to {outage[0]} of its {outage[1]}"
                    " URLs checked tonight",
                )
            return failed(GONE, f"soft 404: serves {served}, not an image")
        if check.get("image_status") != schema.OK:  # a format we cannot decode, or a broken picture
            return failed(
                TRANSIENT,
                f"picture not checked: {check.get('image_error')}"
                f" ({check.get('content_type') or 'no Content-Type'}), bytes differ from the"
                " snapshot's",
            )
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
        obs.update(
            kind="same",
            reason="same bytes"
            if not bytes_changed
            else f"same picture, other bytes: pHash distance {distance} <= {params.max_distance}",
        )
    else:
        obs.update(kind="changed", reason=f"another picture: pHash distance {distance} > {params.max_distance}")
    return obs


def _streak_counts(row: dict) -> tuple[int, int, int]:
    """(consecutive, gone, evidence) failures of a history row (or ingest_night()'s stand-in).

    A history written before the gone/evidence counters existed has only the streak and the
    night's failure kind: tonight's answer is then the one known 'gone' or 'no_host' answer of
    the streak. why: a lower bound: a URL then waits at most a night longer, never dies sooner.
    """
    consecutive = row.get("consecutive_failures") or 0
    gone, evidence = row.get("gone_failures"), row.get("evidence_failures")
    if gone is None or evidence is None:
        failure = row.get("failure") if consecutive else None
        gone = int(failure == GONE)
        evidence = int(failure in (GONE, NO_HOST))
    return consecutive, gone, evidence


def streak_after(before: dict | None, failure: str | None) -> dict:
    """The failure streak tonight: the night before's counts plus tonight's answer, all reset by a
    success.

    Args:
        before: the night before's row (a history row or ingest_night()'s stand-in); None: no
            night before (the ingest fetch judged as a night).
        failure: tonight's failure kind, None when the check succeeded.
    Returns:
        {"consecutive_failures": failed nights in a row, "gone_failures": of those, the 'gone'
        answers, "evidence_failures": the 'gone' and 'no_host' answers}, tonight included.
    """
    if failure is None:
        return {"consecutive_failures": 0, "gone_failures": 0, "evidence_failures": 0}
    consecutive, gone, evidence = _streak_counts(before or {})
    return {
        "consecutive_failures": consecutive + 1,
        "gone_failures": gone + int(failure == GONE),
        "evidence_failures": evidence + int(failure in (GONE, NO_HOST)),
    }


def verdict_of(
    kind: str, failure: str | None, streak: dict, params: RefreshParams, previous_status: str | None = None
) -> str:
    """The night's verdict from the observation, the failure streak (tonight included) and the
    night before's verdict: a dead URL stays dead while it keeps failing, whatever the failure.

    Args:
        kind: observe()'s kind: "same", "new", "unchecked", "changed" or "failed".
        failure: the failure kind (GONE, NO_HOST, TRANSIENT, UNFETCHABLE) when failed.
        streak: streak_after()'s counts, tonight included.
        params: --dead-after, --host-dead-after, --unreachable-dead-after.
        previous_status: the verdict of the night before (ingest_night() on a first night).
    Returns:
        ALIVE, CHANGED, UNREACHABLE or DEAD.
    """
    if kind in ("same", "new", "unchecked"):
        return ALIVE
    if kind == "changed":
        return CHANGED
    if failure == UNFETCHABLE or previous_status == DEAD:
        return DEAD
    # why the answers, not the failed nights: a 500 then one 404 is one 'gone' answer, and a
    # single 404 is not proof (docs/refresh.md, "Why these defaults")
    if failure == GONE and streak["gone_failures"] >= max(params.dead_after, 1):
        return DEAD
    if failure == NO_HOST and streak["evidence_failures"] >= max(params.host_dead_after, 1):
        return DEAD
    if params.unreachable_dead_after and streak["consecutive_failures"] >= params.unreachable_dead_after:
        return DEAD
    return UNREACHABLE


def judge(
    entry: dict,
    check: dict,
    previous: dict | None,
    detected: dict,
    params: RefreshParams,
    outages: dict | None = None,
    walls: dict | None = None,
) -> dict:
    """One status row: a snapshot key, tonight's check of its URL, and its latest history row.

    Args:
        entry: the key's snapshot entry (snapshot_entry()).
        check: tonight's check of its URL.
        previous: the key's row of the latest earlier night, or None (then the ingest fetch is
            the night before: ingest_night()).
        detected: {sha256: n} of the many-URLs placeholder rule.
        params: the night's settings.
        outages: observe()'s host outages.
        walls: observe()'s walls.
    Returns:
        the row, with the columns of schema.REFRESH_SCHEMA.
    """
    obs = observe(entry, check, detected, params, outages, walls)
    failed = obs["kind"] == "failed"
    previous_status = (previous or {}).get("status")
    # No history row: the ingest fetch is the night before (docs/refresh.md, "The first night").
    before_row = previous if previous is not None else ingest_night(entry, params)
    before = before_row.get("status")
    streak = streak_after(before_row, obs["failure"] if failed else None)
    consecutive = streak["consecutive_failures"]
    verdict = verdict_of(obs["kind"], obs["failure"], streak, params, before)
    reason = obs["reason"]
    since = "" if previous is not None or consecutive <= 1 else ", the ingest fetch included"
    if failed and verdict == UNREACHABLE and obs["failure"] in (GONE, NO_HOST):
        if obs["failure"] == GONE:
            answers, after, what = streak["gone_failures"], params.dead_after, "'gone'"
        else:
            answers, after, what = streak["evidence_failures"], params.host_dead_after, "'gone' or 'no_host'"
        reason += (
            f" ({answers} {what} answer(s) in {consecutive} failed night(s) in a row{since};"
            f" dead after {after} such answers)"
        )
    elif failed and verdict == DEAD and before == DEAD:
        # why two texts: on a key's first night the "night before" is its ingest fetch, not a night
        reason += " (dead since an earlier night, still failing)" if previous else " (dead at its ingest fetch too)"
    elif failed and verdict == DEAD and obs["failure"] == TRANSIENT:
        reason += f" (failed {consecutive} nights in a row{since}; dead after {params.unreachable_dead_after})"
    dead_since = None
    if verdict == DEAD:
        dead_since = previous.get("dead_since") if previous and previous_status == DEAD else None
        dead_since = dead_since or params.night
    return {
        "night": params.night,
        "dataset": entry.get("dataset"),
        "key": entry.get("key"),
        "url": entry.get("url"),
        "host": entry.get("host"),
        "status": verdict,
        "http_status": check.get("http_status"),
        "checked_at": check.get("checked_at"),
        "sha256": obs["sha256"],
        "phash": obs["phash"],
        "error": reason if verdict in (UNREACHABLE, DEAD) else None,
        "reason": reason,
        "method": check["method"],
        "requests": check.get("requests") or 0,
        "failure": obs["failure"],
        "bytes_changed": obs["bytes_changed"],
        "phash_distance": obs["phash_distance"],
        "placeholder": obs["placeholder"],
        "final_url": check.get("final_url"),
        "picture_unchecked": obs["picture_unchecked"],
        **streak,
        "previous_nights": ((previous.get("previous_nights") or 0) + 1) if previous else 0,
        "previous_status": previous_status,
        "newly_dead": verdict == DEAD and before != DEAD,
        "revived": verdict in (ALIVE, CHANGED) and before == DEAD,
        "dead_since": dead_since,
        "ingest_status": entry.get("ingest_status"),
        "ingest_sha256": entry.get("sha256"),
        "ingest_phash": entry.get("phash"),
        "ingest_fetched_at": entry.get("fetched_at"),
        "snapshot": entry.get("snapshot"),
    }
