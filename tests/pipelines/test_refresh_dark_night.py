"""A night on which the refresh's own network fails (every host refuses the connection, as behind a
broken firewall or NAT) is refused, not recorded: recorded, it is a `no_host` answer for every URL
of the snapshot, and with --host-dead-after 1 every live URL is `dead` at once. A real loopback web
of 40 hosts (127.0.0.1-40), the real job, one --history.
"""

import contextlib
import json
import os

import pyarrow.dataset as ds

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.synthetic_out import fetched_ok_row, write_snapshot_table
from tests.table_readers import night_options, one_line
from transforms.liveness import dark_night, verdicts

HOSTS = 40  # why 40: the second night has 20 hosts that served, DARK_NIGHT_MIN_HOSTS
JPEG = {"Content-Type": "image/jpeg"}


def web_of_hosts(stack, tmp_path, hosts=HOSTS):
    """One server a host on 127.0.0.1..hosts, each serving its picture; the snapshot of their URLs."""
    servers, rows = [], []
    for n in range(1, hosts + 1):
        body = jpeg(n)
        server = stack.enter_context(SampleWebServer({"/p.jpg": Reply(200, body, JPEG)}, host=f"127.0.0.{n}"))
        servers.append(server)
        rows.append(fetched_ok_row(f"cc3m:{n}", server.url("/p.jpg"), body))
    return servers, write_snapshot_table(str(tmp_path / "snapshot"), rows)


def night(tmp_path, snapshot, date, **extra):
    """The refresh of `date` (exit status, REFRESH_OUT) with the loopback hosts allowed."""
    # why --host-dead-after 1: the strictest setting, where one recorded dark night kills every URL
    options, out = night_options(
        tmp_path, snapshot, date, **{"allow-network": "127.0.0.0/26", "host-dead-after": 1, **extra}
    )
    return refresh_job.main(options), out


def verdicts_of(out):
    rows = ds.dataset(os.path.join(out, "status"), format="parquet").to_table().to_pylist()
    return sorted(r["status"] for r in rows)


def test_a_night_when_no_host_answers_is_refused_and_a_half_dark_night_is_recorded(tmp_path, capsys):
    with contextlib.ExitStack() as stack:
        servers, snapshot = web_of_hosts(stack, tmp_path)
        for server in servers[HOSTS // 2 :]:
            server.stop()  # half the hosts gone: a bad night for the web, not a broken network
        status, out = night(tmp_path, snapshot, "2030-03-01")
        assert status == 0
        assert verdicts_of(out) == [verdicts.ALIVE] * (HOSTS // 2) + [verdicts.DEAD] * (HOSTS // 2)
        summary = json.load(open(os.path.join(out, "summary.json")))
        assert summary["dark_night"] == {
            "hosts_with_pictures_before": HOSTS,
            "hosts_serving_tonight": HOSTS // 2,
            "dark": False,
            "accepted": False,
        }
        for server in servers[: HOSTS // 2]:
            server.stop()  # then every connection refused: the run's own network
        capsys.readouterr()
        status, out = night(tmp_path, snapshot, "2030-03-02")
        line = one_line(capsys, "refresh")
        assert status == 1, line
        assert f"only 0 of the {HOSTS // 2} hosts that served pictures the night before" in line
        assert "--accept-dark-night" in line
        assert not os.path.exists(os.path.join(out, "status")) or not os.listdir(os.path.join(out, "status"))
        assert sorted(os.listdir(tmp_path / "history")) == ["2030-03-01"]  # the history keeps its night
        # told the hosts are really gone, the job records the night as it is
        status, out = night(tmp_path, snapshot, "2030-03-02", **{"accept-dark-night": True})
    assert status == 0
    assert verdicts_of(out) == [verdicts.DEAD] * HOSTS
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["dark_night"]["dark"] and summary["dark_night"]["accepted"]


def test_a_night_when_none_of_a_few_hosts_answers_is_refused(tmp_path, capsys):
    # why 5 hosts: a researcher's slice of a manifest, under DARK_NIGHT_MIN_HOSTS; before, the
    # run's broken network was recorded (exit 0) and every live URL was `dead` with --host-dead-after 1
    few = 5
    with contextlib.ExitStack() as stack:
        servers, snapshot = web_of_hosts(stack, tmp_path, few)
        status, out = night(tmp_path, snapshot, "2030-03-01")
        assert status == 0
        assert verdicts_of(out) == [verdicts.ALIVE] * few
        for server in servers:
            server.stop()  # every connection refused: the run's own network
        capsys.readouterr()
        status, out = night(tmp_path, snapshot, "2030-03-02")
        line = one_line(capsys, "refresh")
        assert status == 1, line
        assert f"only 0 of the {few} hosts that served pictures the night before" in line
        assert not os.path.exists(os.path.join(out, "status")) or not os.listdir(os.path.join(out, "status"))
        assert sorted(os.listdir(tmp_path / "history")) == ["2030-03-01"]


def test_dark_takes_most_of_enough_hosts_or_all_of_a_few():
    record = dark_night.dark_night_record
    assert record((24, 12), False)["dark"] is False  # half still serve
    assert record((24, 11), False)["dark"] is True
    assert record((19, 1), False)["dark"] is False  # too few hosts to tell a few deaths from the network
    assert record((19, 0), False)["dark"] is True  # but none of them serving is the network
    assert record((2, 0), False)["dark"] is True
    assert record((1, 0), False)["dark"] is False  # one host that died looks the same as the network
    assert record((0, 0), False)["dark"] is False
    assert record((20, 0), False)["dark"] is True
    dark_night.check_dark_night(record((20, 0), True))  # accepted: no refusal


def test_a_host_counts_as_serving_before_by_its_last_night_or_its_ingest():
    had = dark_night.had_picture
    assert had({"previous_status": None, "ingest_status": "ok"})
    assert not had({"previous_status": None, "ingest_status": "http_error"})
    assert had({"previous_status": verdicts.CHANGED, "ingest_status": "http_error"})
    assert not had({"previous_status": verdicts.UNREACHABLE, "ingest_status": "ok"})
