"""How one distinct URL is checked tonight, cheapest first: the plan (no request, a file look-up,
a conditional GET, HEAD then GET), the requests on the fetcher's loop, and the check dict the
verdict rules (`verdicts.observe`) read.
"""

import datetime
import hashlib
import time
from typing import Any

from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.image_checks import DEFAULT_MAX_PIXELS, inspect_image
from transforms.liveness.host_outages import page_shape, redirect_page
from transforms.liveness.verdicts import (
    CONDITIONAL,
    EPOCH,
    FILE,
    GET,
    GONE_HTTP_STATUSES,
    HEAD,
    HEAD_GET,
    HEAD_REFUSED,
    NOT_CHECKED,
    NOT_RECHECKED,
    claims_image,
    has_baseline,
    has_undecodable_baseline,
    host_of,
    is_http,
)

__all__ = [
    "LISTING_ATTEMPTS",
    "LISTING_BACKOFF_SECONDS",
    "look_up_file",
    "looks_like_image",
    "plan_check",
    "head_settles",
    "conditional_settles",
    "run_plan",
    "new_check",
    "finish_check",
    "check_file",
]


def plan_check(url: str, entries: list, params) -> dict:
    """How to check one distinct URL, cheapest first (docs/refresh.md, "Requests").

    Args:
        url: the URL as the snapshot wrote it.
        entries: the snapshot entries of every key listing it.
        params: the night's RefreshParams (head_first).
    Returns:
        {"url", "method", "headers", "validated_sha256", "validated_phash", "size_bytes"}.

    - every row of the URL was invalid_url/blocked at ingest: no request;
    - not http(s) but read at ingest (ImageNet files): look the file up;
    - one picture recorded for it, with an ETag or Last-Modified: a conditional GET (a 304 settles
      it without a body; a changed picture comes back in the same request);
    - otherwise HEAD first (dead URLs settle without a body), then GET when HEAD cannot settle it;
      GET straight away with head_first=False.
    """
    plan: dict[str, Any] = {
        "url": (url or "").strip(),
        "method": GET,
        "headers": None,
        "validated_sha256": None,
        "validated_phash": None,
        "size_bytes": None,
    }
    if all(e.get("ingest_status") in NOT_RECHECKED for e in entries) or not plan["url"]:
        plan["method"] = NOT_CHECKED
        return plan
    if not is_http(plan["url"]):
        plan["method"] = FILE
        sizes = {e.get("size_bytes") for e in entries if has_baseline(e)}
        plan["size_bytes"] = sizes.pop() if len(sizes) == 1 else None
        return plan
    # rows whose bytes the snapshot holds: a decoded picture, or an image we could not decode (SVG, HEIC)
    kept = [e for e in entries if has_baseline(e) or has_undecodable_baseline(e)]
    pictures = {e["sha256"] for e in kept}
    with_validators = sorted(
        (e for e in kept if e.get("etag") or e.get("last_modified")), key=lambda e: e.get("fetched_at") or EPOCH
    )
    if len(pictures) == 1 and with_validators:
        latest = with_validators[-1]
        headers = {}
        if latest.get("etag"):
            headers["If-None-Match"] = latest["etag"]
        if latest.get("last_modified"):
            headers["If-Modified-Since"] = latest["last_modified"]
        plan.update(
            method=CONDITIONAL, headers=headers, validated_sha256=latest["sha256"], validated_phash=latest["phash"]
        )
    elif params.head_first:
        plan["method"] = HEAD
    return plan


def head_settles(head):
    """True when a HEAD answer is enough: the URL is failing. A 2xx, a refused HEAD (405/501), another
    4xx (servers that mishandle HEAD), a connection dropped or a HEAD left without an answer (a
    timeout, the connection made), or a 404/410/451 needs
    the GET: a 'gone' answer is evidence that makes a URL dead, and servers whose handlers only know
    GET answer HEAD with their 404 page while GET serves the picture, so only the GET's answer is
    taken as evidence."""
    if head.status == schema.OK:
        return False
    if head.status == schema.HTTP_ERROR:
        code = head.http_status or 0
        if code in HEAD_REFUSED:
            return False
        # why: a 500 to HEAD is the handler failing on a method it was not written for (frameworks
        # that route GET only) as often as the host failing: the GET tells which; a 502-504 or a
        # 429 is about the host, and a second request would only add to its load
        return (code > 500) or code == 429 or 300 <= code < 400
    if head.status == schema.CONNECTION_ERROR and not (
        head.unconnectable or head.refused or head.name_not_found or head.skipped
    ):
        # why: the host took the connection and hung up on the HEAD (a reset, no status line), as
        # servers and firewalls that drop HEAD do while GET serves the picture: settled here, a
        # live URL would be unreachable every night, then dead after --unreachable-dead-after
        return False
    if head.status == schema.TIMEOUT and not (head.unconnectable or head.skipped):
        # why: the host took the connection and never answered the HEAD (servers and proxies that
        # ignore HEAD) while GET serves the picture; the GET has its own --timeout. A connect
        # that timed out is about the host (it feeds the breaker): no second request then
        return False
    return True  # no connection (also in time), blocked, invalid redirect, opted out


def conditional_settles(answer) -> bool:
    """True when the conditional GET's answer is the night's. A 4xx other than 404/410/451 and 429
    (412 Precondition Failed, a 400 for the If-* headers, ...) may turn down the validators rather
    than the picture: then a plain GET, or a live URL whose server mishandles them would be
    unreachable every night, then dead after --unreachable-dead-after."""
    code = answer.http_status or 0
    if answer.status != schema.HTTP_ERROR or not 400 <= code < 500:
        return True
    return code in GONE_HTTP_STATUSES or code == 429


async def run_plan(fetcher, plan):
    """The requests of one plan, in order, on the fetcher's loop. Returns [(method, FetchResult)]."""
    url = plan["url"]
    if plan["method"] == CONDITIONAL:
        steps = [("GET", await fetcher.fetch(url, "GET", plan["headers"]))]
        if not conditional_settles(steps[0][1]):
            steps.append(("GET", await fetcher.fetch(url, "GET")))
        return steps
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


# Signatures of image formats the decoder does not read: a body starting so is a picture we cannot
# check, not a soft 404 (HEIC/AVIF are ISO-BMFF "ftyp" boxes; JPEG XL; SVG is XML).
_UNDECODED_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")
_FTYP_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def looks_like_image(content_type: str | None, body: bytes | None) -> bool:
    """The Content-Type (image/*) or the first bytes say a picture, decodable or not.

    Args:
        content_type: the response's Content-Type.
        body: the response body.
    Returns:
        True for an image/* type or an SVG, HEIC/AVIF or JPEG XL signature.
    """
    if claims_image(content_type):
        return True
    head = (body or b"")[:512]
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return True
    if head.startswith(_UNDECODED_SIGNATURES):
        return True
    text = head.lstrip().lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)


def _picture(check, body, max_pixels, hosts=()):
    check["sha256"] = hashlib.sha256(body).hexdigest()
    image = inspect_image(body, max_pixels)
    check.update(
        image_status=image.status,
        image_error=image.error,
        phash=image.phash,
        image_like=image.status != schema.NOT_IMAGE or looks_like_image(check.get("content_type"), body),
    )
    if not check["image_like"]:  # why: a soft 404's page, compared across the host's URLs (host_outages)
        check["page_shape"] = page_shape(body, hosts)
    return check


def new_check(plan, method=None):
    return {
        "method": method or plan["method"],
        "requests": 0,
        "status": None,
        "http_status": None,
        "error": None,
        "final_url": None,
        "content_type": None,
        "name_not_found": False,
        "refused": False,
        "not_modified": False,
        "image_like": False,
        "validated_sha256": plan.get("validated_sha256"),
        "validated_phash": plan.get("validated_phash"),
        "sha256": None,
        "page_shape": None,
        "redirect_page": None,
        "phash": None,
        "image_status": None,
        "image_error": None,
        "checked_at": _now(),
    }


def finish_check(plan: dict, steps: list, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """The check dict of a plan's requests, hashing the body, if any.

    Args:
        plan: plan_check()'s plan.
        steps: [(method, FetchResult)] from run_plan().
        max_pixels: the decode budget.
    Returns:
        the check (new_check()'s keys, filled).
    """
    methods = [m for m, _ in steps]
    label = (
        plan["method"]
        if plan["method"] == CONDITIONAL
        else (HEAD_GET if methods == ["HEAD", "GET"] else HEAD if methods == ["HEAD"] else GET)
    )
    _, last = steps[-1]
    check = new_check(plan, label)
    check.update(
        requests=sum(r.attempts for _, r in steps),
        status=last.status,
        http_status=last.http_status,
        error=last.error,
        final_url=last.final_url,
        content_type=last.content_type,
        name_not_found=bool(last.name_not_found),
        refused=bool(getattr(last, "refused", False)),
    )
    if last.status == schema.OK:
        if last.http_status == 304:
            # only the conditional request itself may answer "not modified", not the plain GET after it
            check["not_modified"] = plan["method"] == CONDITIONAL and len(steps) == 1
            if not check["not_modified"]:  # a 304 we did not ask for cannot vouch for anything
                check.update(status=schema.HTTP_ERROR, error="HTTP 304 to an unconditional request")
        elif methods[-1] == "GET":
            # why the hosts: a CDN's wall page names the site asked for (walls.py)
            _picture(check, last.body or b"", max_pixels, (host_of(plan["url"]), host_of(last.final_url)))
            if check["page_shape"]:  # why: a consent or login page names each URL, one page by its address
                check["redirect_page"] = redirect_page(plan["url"], check["final_url"])
    return check


LISTING_ATTEMPTS = 3  # a file look-up that raises is retried this many times in all
LISTING_BACKOFF_SECONDS = 0.5


def look_up_file(path: str, attempts: int = LISTING_ATTEMPTS, backoff: float = LISTING_BACKOFF_SECONDS):
    """The metadata of one file, or None when the filesystem says it does not exist.

    A look-up that raises (a storage outage, a throttled listing, a permission hiccup) is retried;
    only an answer counts: a file is missing when a listing matched nothing and, asked directly,
    the filesystem says it does not exist.

    Args:
        path: a file path Beam's FileSystems reads (local, gs://, ...).
        attempts: look-ups in all before giving up.
        backoff: seconds before the second attempt, doubled for each next one.
    Returns:
        the FileMetadata, or None when the file does not exist.
    Raises:
        OSError: every attempt raised (the caller reports the check as transient).
    """
    error = None
    for attempt in range(max(attempts, 1)):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            matches = FileSystems.match([path])[0].metadata_list
            if matches:
                return matches[0]
            if not FileSystems.exists(path):
                return None
            error = f"{path} exists but its listing is empty"
        except Exception as exc:  # some filesystems raise for a missing file: ask directly
            error = f"{type(exc).__name__}: {exc}"
            try:
                if not FileSystems.exists(path):
                    return None
            except Exception as again:
                error = f"{type(again).__name__}: {again}"
    raise OSError(f"cannot look up {path} after {max(attempts, 1)} attempts: {error}"[:300])


def check_file(plan: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """A file row (ImageNet): gone when the filesystem says it does not exist; a look-up that keeps
    failing is a transient failure (never 'gone'); the same size as at ingest counts as the same file
    (reading 1.2M files every night to hash them would cost more than the answer is worth);
    otherwise read and compared like a download."""
    check = new_check(plan, FILE)
    path = plan["url"]
    check["final_url"] = path
    try:
        found = look_up_file(path)
    except OSError as exc:
        check.update(status=schema.CONNECTION_ERROR, error=str(exc))
        return check
    if found is None:
        check.update(status=schema.HTTP_ERROR, http_status=404, error=f"file {path} no longer exists")
        return check
    matches = [found]
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
