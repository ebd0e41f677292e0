"""Dark nights: a night on which most hosts that served pictures before serve none (of at least 20
such hosts), or none of them does (of at least 2).

Real hosts die a few at a time; when most of them fail on one night, the web did not die, the
run's own network did (a VPC resolver that answers "no such name" for public names, a firewall
that resets every connection, a proxy serving its block page, a NAT gateway down). Such a night's
answers are evidence about nothing, and recorded they would start a failure streak on every URL:
a few nights of it and the data team deletes live rows. So the refresh refuses to record a dark
night (exit 1, REFRESH_OUT and the history keep the previous night) unless told it is real
(`--accept-dark-night`). docs/refresh.md, "Dark nights".

- `had_picture(row)`: a status row whose URL served its picture on the night before.
- `DarkNightCounts`: host records (checks.HostTable) -> (hosts with a picture before, of them the
  hosts serving one tonight).
- `dark_night_record(counts, accept)`: summary.json's `dark_night`; `check_dark_night(record)`
  raises DarkNight for a dark night not accepted.
"""

import apache_beam as beam

from transforms.errors import EnvironmentFailure
from transforms.liveness.verdicts import ALIVE, BASELINE_STATUSES, CHANGED

__all__ = [
    "DARK_NIGHT_MIN_HOSTS",
    "DARK_NIGHT_MIN_SERVING",
    "DARK_NIGHT_NONE_SERVING_MIN_HOSTS",
    "DarkNight",
    "DarkNightCounts",
    "check_dark_night",
    "dark_night_record",
    "had_picture",
]

# why 20 hosts: under that, a run's network and a few real deaths cannot be told apart by "fewer
# than half serve" (2 of a snapshot's 3 hosts may really die); CC3M alone spans ~50,000 hosts.
DARK_NIGHT_MIN_HOSTS = 20
# why a half: on a real night a few hosts in a thousand stop serving; a broken network takes all
DARK_NIGHT_MIN_SERVING = 0.5
# why 2: a researcher's slice of a manifest has 2-19 hosts, and a broken network takes them all at
# once, which independent hosts hardly ever do on one night; one host that died cannot be told from
# the network by counting, so a one-host snapshot gets no check.
DARK_NIGHT_NONE_SERVING_MIN_HOSTS = 2


class DarkNight(EnvironmentFailure):
    """Most hosts that served pictures before serve none tonight: exit 1, nothing recorded."""


def had_picture(row: dict) -> bool:
    """True when the row's URL served its picture on the night before tonight (the previous night's
    verdict; on a key's first night, its ingest fetch).

    Args:
        row: a status row (verdicts.status_row).
    Returns:
        Whether tonight's failure of that URL would be news.
    """
    previous = row.get("previous_status")
    if previous is not None:
        return previous in (ALIVE, CHANGED)
    return row.get("ingest_status") in BASELINE_STATUSES


class DarkNightCounts(beam.CombineFn):
    """Host records -> (hosts with `pictures_before`, of them hosts with a row alive or changed tonight)."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, accumulator, host):
        before, serving = accumulator
        if host["pictures_before"]:
            before += 1
            serving += int(host[ALIVE] + host[CHANGED] > 0)
        return before, serving

    def merge_accumulators(self, accumulators):
        before, serving = 0, 0
        for b, s in accumulators:
            before, serving = before + b, serving + s
        return before, serving

    def extract_output(self, accumulator):
        return accumulator


def dark_night_record(counts: tuple[int, int], accept: bool) -> dict:
    """summary.json's `dark_night`: the hosts counted, whether the night is dark, whether accepted.

    Args:
        counts: DarkNightCounts' (hosts with a picture before, of them serving tonight).
        accept: --accept-dark-night.
    Returns:
        {"hosts_with_pictures_before", "hosts_serving_tonight", "dark", "accepted"}: dark when at
        least DARK_NIGHT_MIN_HOSTS hosts had a picture and fewer than half of them serve one, or at
        least DARK_NIGHT_NONE_SERVING_MIN_HOSTS had one and none serves.
    """
    before, serving = counts
    most_dark = before >= DARK_NIGHT_MIN_HOSTS and serving < before * DARK_NIGHT_MIN_SERVING
    all_dark = before >= DARK_NIGHT_NONE_SERVING_MIN_HOSTS and serving == 0
    dark = most_dark or all_dark
    return {"hosts_with_pictures_before": before, "hosts_serving_tonight": serving, "dark": dark, "accepted": accept}


def check_dark_night(record: dict) -> None:
    """Raises DarkNight for a dark night not accepted (dark_night_record).

    Args:
        record: dark_night_record()'s.
    Raises:
        DarkNight: one line, exit 1.
    """
    if record["dark"] and not record["accepted"]:
        raise DarkNight(
            f"only {record['hosts_serving_tonight']} of the {record['hosts_with_pictures_before']} hosts"
            " that served pictures the night before serve one tonight: this run's network looks broken"
            " (DNS, egress, a proxy), so nothing was recorded and REFRESH_OUT and the history keep the"
            " previous night; rerun once the network is fixed, or add --accept-dark-night if those"
            " hosts are really gone"
        )
