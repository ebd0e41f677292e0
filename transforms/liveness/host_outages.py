"""Host outages: one host answering most of its URLs tonight with one same page that is not a
picture (a maintenance or parking page, served in place or through a redirect).

Such soft 404s are an outage of the host, not evidence about each URL: `verdicts.observe` counts
them as `no_host` answers (--host-dead-after) instead of `gone` (--dead-after), so a host down
for maintenance two nights running no longer has every URL `dead` at once (docs/refresh.md,
"Host outages").
"""

import apache_beam as beam

from transforms.liveness.verdicts import FILE, NOT_CHECKED, soft_404_page

__all__ = ["HOST_OUTAGE_MIN_URLS", "outage_vote", "is_outage", "FindHostOutages"]

HOST_OUTAGE_MIN_URLS = 5  # URLs of one host with the same page, at least, and most of its URLs


def outage_vote(item: dict) -> list[tuple[str, str | None]]:
    """One checked URL's vote: [(host, the soft-404 page's sha256 or None)]; [] for URLs that made
    no request tonight (invalid at ingest, files) or have no host.

    Args:
        item: CheckUrls' {"url", "entries", "check"}.
    Returns:
        [] or [(host, sha256 or None)].
    """
    check = item["check"]
    host = next((e.get("host") for e in item["entries"] if e.get("host")), None)
    if host is None or check["method"] in (NOT_CHECKED, FILE):
        return []
    return [(host, soft_404_page(check))]


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
    """A host's votes -> (URLs checked, {page sha256: URLs served it}); combined, never one list per host."""

    def create_accumulator(self):
        return 0, {}

    def add_input(self, accumulator, page):
        checked, counts = accumulator
        if page is not None:
            counts[page] = counts.get(page, 0) + 1
        return checked + 1, counts

    def merge_accumulators(self, accumulators):
        checked, counts = 0, {}
        for n, more in accumulators:
            checked += n
            for page, k in more.items():
                counts[page] = counts.get(page, 0) + k
        return checked, counts

    def extract_output(self, accumulator):
        return accumulator


def _outages(host_counts):
    host, (checked, counts) = host_counts
    return [((host, page), (n, checked)) for page, n in sorted(counts.items()) if is_outage(n, checked)]


class FindHostOutages(beam.PTransform):
    """Checked URLs -> ((host, page sha256), (URLs served that page, URLs of the host checked)) for
    each host that served one same non-picture page to most of its URLs tonight (is_outage)."""

    def expand(self, checked):
        return (
            checked
            | "Votes" >> beam.FlatMap(outage_vote)
            # why per host: a host's URLs checked tonight are the denominator of "most of its URLs"
            | "PerHost" >> beam.CombinePerKey(_PageCounts())
            | "Outages" >> beam.FlatMap(_outages)
        )
