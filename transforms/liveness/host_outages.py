"""Host outages: one host answering most of its URLs tonight with one same page that is not a
picture (a maintenance or parking page, served in place or through a redirect; a consent page).

"One same page" is the same text up to numbers and ids (`page_shape`): maintenance, parking and
bot-wall pages commonly carry a request or incident id, a timestamp or a nonce that differs on
every answer ("Incapsula incident ID: 808000450231937862-...", "Ray ID: 7d3f..."); compared byte
for byte, each would be a page of its own, each URL a soft 404 `gone`, and every live URL of the
host `dead` on the second such night.

A host answering 404 (410, 451) to most of its URLs at once (a deploy that broke every path, a
misrouted virtual host) is counted the same way, the status its page (`verdicts.gone_answer_page`).

A host may also send most of its URLs through a redirect to one page that names where each came
from (a consent wall, a login page: "Before you continue to <the photo's page>"): pages in words,
but one page by its address (`redirect_page`: the target without its query), so that too is one
page of the host.

Such soft 404s are an outage of the host, not evidence about each URL: `verdicts.observe` counts
them as `no_host` answers (--host-dead-after) instead of `gone` (--dead-after), so a host down
for maintenance two nights running no longer has every URL `dead` at once (docs/refresh.md,
"Host outages").
"""

import hashlib
import re
import urllib.parse
from collections.abc import Iterable

import apache_beam as beam

from transforms.liveness.verdicts import FILE, NOT_CHECKED, gone_answer_page, soft_404_page

__all__ = [
    "HOST_OUTAGE_MIN_URLS",
    "REDIRECT_PAGE",
    "outage_vote",
    "is_outage",
    "page_shape",
    "redirect_page",
    "FindHostOutages",
]

HOST_OUTAGE_MIN_URLS = 5  # URLs of one host with the same page, at least, and most of its URLs
# A token holding a digit (an id, a number, a date, a nonce, a hex digest): blanked by page_shape.
_TOKEN_WITH_DIGIT = re.compile(rb"[A-Za-z0-9+/=_.:-]*[0-9][A-Za-z0-9+/=_.:-]*")
_SPACES = re.compile(rb"\s+")
REDIRECT_PAGE = "redirect:"  # starts redirect_page's names, which page shapes (hex) never do


def page_shape(body: bytes, hosts: Iterable[str | None] = ()) -> str:
    """A page's text up to numbers, ids and the site's name: the sha256 of its bytes with the host
    names asked for blanked (with and without "www."), then every token that holds a digit, and runs
    of white space made one.

    Two answers of one maintenance page that differ only in a request id or a timestamp get one
    shape, and so do one CDN's challenge pages naming the site each stands in front of ("alpha.test
    needs to review the security of your connection": walls.py); pages that differ in words (each
    photo's own "not found" page, with its title) do not.

    Args:
        body: the page's bytes.
        hosts: the host names the page may name (the URL's, and where its redirects ended).
    Returns:
        A hex sha256.
    """
    for host in sorted({name.removeprefix("www.") for name in hosts if name}, key=len, reverse=True):
        # why: the longest first, so a name inside another (b.test in a.b.test) blanks no part of it
        body = re.sub(rb"(?:www\.)?" + re.escape(host.encode()), b"#", body, flags=re.IGNORECASE)
    text = _SPACES.sub(b" ", _TOKEN_WITH_DIGIT.sub(b"#", body)).strip()
    return hashlib.sha256(text).hexdigest()


def redirect_page(url: str, final_url: str | None) -> str | None:
    """The page a redirect of `url` ended on, by its address: REDIRECT_PAGE + scheme://host/path,
    without query or fragment (a consent or login page names the URL each visitor came from there);
    None when there was no redirect.

    Args:
        url: the URL requested.
        final_url: where its redirects ended.
    Returns:
        The page's name, or None.
    """
    if not final_url or final_url.strip() == (url or "").strip():
        return None
    try:
        parts = urllib.parse.urlsplit(final_url.strip())
    except ValueError:
        return None
    return f"{REDIRECT_PAGE}{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}"


def outage_vote(item: dict) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """One checked URL's vote: [(host, [(the soft-404 page's shape, its sha256), and (its
    redirect_page, the sha256) after a redirect])], the list empty for no soft 404; [] for URLs that
    made no request tonight (invalid at ingest, files) or have no host.

    Args:
        item: CheckUrls' {"url", "entries", "check"}.
    Returns:
        [] or [(host, [(page name, sha256), ...])].
    """
    check = item["check"]
    host = next((e.get("host") for e in item["entries"] if e.get("host")), None)
    if host is None or check["method"] in (NOT_CHECKED, FILE):
        return []
    answer = gone_answer_page(check)
    if answer is not None:  # why: a 404 to every path of a host (a deploy) is one answer of the host
        return [(host, [(answer, None)])]
    shape = soft_404_page(check)
    if shape is None:
        return [(host, [])]
    names = [shape] + ([check["redirect_page"]] if check.get("redirect_page") else [])
    return [(host, [(name, check.get("sha256")) for name in names])]


def is_outage(same_page: int, checked: int, minimum: int = HOST_OUTAGE_MIN_URLS) -> bool:
    """At least `minimum` URLs of a host got the same page, and they are most of its URLs checked tonight.

    Args:
        same_page: the host's URLs answered with that page.
        checked: the host's URLs checked with a request tonight.
        minimum: HOST_OUTAGE_MIN_URLS.
    Returns:
        True for an outage of the host.
    """
    return same_page >= minimum and same_page * 2 > checked


class _PageCounts(beam.CombineFn):
    """A host's votes -> (URLs checked, {page shape: (URLs served it, the smallest sha256 of its
    answers)}); combined, never one list per host."""

    def create_accumulator(self):
        return 0, {}

    def add_input(self, accumulator, vote):
        checked, counts = accumulator
        for name, sha256 in vote:
            _count(counts, name, 1, sha256)
        return checked + 1, counts

    def merge_accumulators(self, accumulators):
        checked, counts = 0, {}
        for n, more in accumulators:
            checked += n
            for shape, (k, sha256) in more.items():
                _count(counts, shape, k, sha256)
        return checked, counts

    def extract_output(self, accumulator):
        return accumulator


def _count(counts, shape, n, sha256):
    before = counts.get(shape)
    if before is None:
        counts[shape] = (n, sha256)
    else:  # why the smallest: one sha256 to name the page by, whatever order the answers came in
        named = [digest for digest in (before[1], sha256) if digest]
        counts[shape] = (before[0] + n, min(named) if named else None)


def _outages(host_counts):
    host, (checked, counts) = host_counts
    found = [
        ((host, name), (n, checked, sha256)) for name, (n, sha256) in sorted(counts.items()) if is_outage(n, checked)
    ]
    shapes = [outage for outage in found if not outage[0][1].startswith(REDIRECT_PAGE)]
    # why: one outage a host in summary.json; a redirect's page counts only where the shapes
    # (pages naming each URL) found none
    return shapes or found


class FindHostOutages(beam.PTransform):
    """Checked URLs -> ((host, page shape or redirect_page), (URLs served that page, URLs of the host checked, the
    smallest sha256 of those answers)) for each host that served one same non-picture page (up to
    numbers and ids: page_shape) to most of its URLs tonight (is_outage)."""

    def expand(self, checked):
        return (
            checked
            | "Votes" >> beam.FlatMap(outage_vote)
            # why per host: a host's URLs checked tonight are the denominator of "most of its URLs"
            | "PerHost" >> beam.CombinePerKey(_PageCounts())
            | "Outages" >> beam.FlatMap(_outages)
        )
