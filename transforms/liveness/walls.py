"""Walls: one same page that is not a picture, served tonight in place of pictures by several
unrelated hosts (a CDN's bot challenge, a consent wall, a proxy's block page).

A host outage (host_outages) needs 5 URLs of one host; most hosts of a snapshot hold 1-4 URLs, and
a CDN (Cloudflare-like) answers such hosts with its one challenge or consent page on the same night.
Each URL was then a soft 404, `gone`, and `dead` on the second night, exit 0, while the picture was
there behind the wall. A page the hosts do not even own says nothing about any picture: observe()
counts such a soft 404 as `transient` (docs/refresh.md, "Walls").

"One same page" is host_outages' page name: its shape (the text up to numbers and ids: a challenge
page's Ray ID changes on every answer), or after a redirect its address (a consent page naming the
page each visitor came from). A 404 (410, 451) is no page here: many hosts answer 404, each about
its own URLs.
"""

import apache_beam as beam

from transforms.liveness.host_outages import outage_vote
from transforms.liveness.verdicts import gone_answer_page

__all__ = ["WALL_MIN_HOSTS", "wall_votes", "FindWalls"]

# why 3: two hosts may share one site's own "not found" template (a mirror, a www. twin); three
# or more hosts serving one page on one night is a page in front of them, not theirs
WALL_MIN_HOSTS = 3


def wall_votes(item: dict) -> list[tuple[tuple[str, str], tuple[int, str | None]]]:
    """One checked URL's votes: ((page name, host), (1, the page's sha256)) for each name of the soft
    404 page it got tonight (its shape, and its redirect page after a redirect); [] for anything else.

    Args:
        item: CheckUrls' {"url", "entries", "check"}.
    Returns:
        The votes, [] for no soft 404.
    """
    if gone_answer_page(item["check"]) is not None:  # why: a status is no page in front of hosts
        return []
    return [((name, host), (1, sha256)) for host, pages in outage_vote(item) for name, sha256 in pages]


def _add(pairs):
    """(count, sha256) pairs -> (the counts summed, the smallest sha256): one name for the page
    whatever order the answers came in."""
    total, named = 0, []
    for n, sha256 in pairs:
        total += n
        if sha256:
            named.append(sha256)
    return total, min(named) if named else None


def _per_page(host_page):
    (name, _host), (urls, sha256) = host_page
    return name, (1, urls, sha256)


def _add_hosts(triples):
    hosts, urls, named = 0, 0, []
    for n_hosts, n_urls, sha256 in triples:
        hosts += n_hosts
        urls += n_urls
        if sha256:
            named.append(sha256)
    return hosts, urls, min(named) if named else None


class FindWalls(beam.PTransform):
    """Checked URLs -> (page name, (hosts that served it, URLs that got it, the smallest sha256 of
    those answers)) for each non-picture page served tonight by at least `min_hosts` hosts."""

    def __init__(self, min_hosts: int = WALL_MIN_HOSTS):
        super().__init__()
        self._min_hosts = min_hosts

    def expand(self, checked):
        minimum = self._min_hosts
        return (
            checked
            | "Votes" >> beam.FlatMap(wall_votes)
            # why two steps: a host counts once per page, however many of its URLs got it
            | "PerHostPage" >> beam.CombinePerKey(_add)
            | "ByPage" >> beam.Map(_per_page)
            | "PerPage" >> beam.CombinePerKey(_add_hosts)
            | "Enough" >> beam.Filter(lambda page: page[1][0] >= minimum)
        )
