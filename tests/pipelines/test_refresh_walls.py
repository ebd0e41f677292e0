"""Walls: one page served in place of pictures by several small hosts on one night (a CDN's bot
challenge, a consent wall all of them redirect to), where no host holds the 5 URLs a host outage
needs; also a challenge naming the site it stands in front of (no digit in a host name to blank).
Before, each such URL was a soft 404, `gone`, and `dead` on the second night, exit 0, while the
picture was there behind the wall (docs/refresh.md, "Walls").

What stays evidence, next to them on the same loopback web: a placeholder picture served by three
hosts, a "removed" page served by two hosts only, and each photo's own "removed" page (in words)
on three hosts.
"""

import hashlib
import json
import socket
from unittest import mock

from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg, placeholder_png
from tests.synthetic_out import fetched_ok_row, write_snapshot_table
from tests.table_readers import night_status
from transforms.fetch import address_policy
from transforms.liveness import verdicts

JPEG = {"Content-Type": "image/jpeg"}
HTML = {"Content-Type": "text/html"}
TITLES = ("sunset over the bay", "red kite", "old mill", "harbour at dawn")
REMOVED = b"<html><body>This image has been removed</body></html>"


def cdn_challenge(method, headers, count):
    """A CDN's bot challenge: one page for every host behind the CDN, its Ray ID new on every answer."""
    ray = hashlib.sha256(f"{count}{sorted(headers.items())}".encode()).hexdigest()[:16]
    body = f"<html><head><title>Just a moment...</title></head><body>Checking your browser. Ray ID: {ray}</body></html>"
    return Reply(200, body.encode(), HTML)


def consent_page(method, headers, count):
    """A consent wall's page naming the photo the visitor came from: words of its own for each URL."""
    return Reply(200, f"<html><body>Before you continue to '{TITLES[count % 4]}'</body></html>".encode(), HTML)


def test_a_page_that_several_small_hosts_serve_is_a_wall_not_each_picture_gone(tmp_path):
    servers = {h: SampleWebServer(host=f"127.0.0.{h}") for h in range(2, 10)}
    rows = []

    def route(h, path, reply, body):
        servers[h].routes[path] = reply
        rows.append(fetched_ok_row(f"cc3m:{h}{path}", servers[h].url(path), body))

    for h in range(2, 6):  # 4 hosts behind one CDN: one URL walled, one served
        route(h, "/wall.jpg", cdn_challenge, jpeg(10 + h))
        route(h, "/ok.jpg", Reply(200, jpeg(20 + h), JPEG), jpeg(20 + h))
    for h in (6, 7, 8):  # 3 hosts redirecting one URL each to one consent address
        route(h, "/consent.jpg", Reply(302, b"", {"Location": servers[9].url(f"/consent?from={h}")}), jpeg(30 + h))
    servers[9].routes["/consent"] = consent_page
    for h in (2, 3, 4):  # a placeholder picture, served in place by 3 hosts: still dead
        route(h, "/placeholder.jpg", Reply(200, placeholder_png(), {"Content-Type": "image/png"}), jpeg(40 + h))
    for h in (2, 3):  # one "removed" page on 2 hosts only: no wall, each URL gone
        route(h, "/removed.jpg", Reply(200, REMOVED, HTML), jpeg(50 + h))
    for h in (5, 6, 7):  # each photo's own removed page, in words, on 3 hosts: gone
        own = f"<html><body>The photo '{TITLES[h - 5]}' was removed by its owner</body></html>".encode()
        route(h, "/own.jpg", Reply(200, own, HTML), jpeg(60 + h))
    for server in servers.values():
        server.__enter__()
    try:
        snapshot = write_snapshot_table(str(tmp_path / "snapshot"), rows)
        nights = [
            night_status(tmp_path, snapshot, d, **{"allow-network": "127.0.0.0/28"})
            for d in ("2030-02-01", "2030-02-02")
        ]
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    last = nights[1]

    def verdicts_of(path):
        return {(r["status"], r["failure"]) for key, r in last.items() if key.endswith(path)}

    walled = [r for key, r in last.items() if key.endswith(("/wall.jpg", "/consent.jpg"))]
    assert len(walled) == 7
    assert {(r["status"], r["failure"]) for r in walled} == {(verdicts.UNREACHABLE, verdicts.TRANSIENT)}, [
        r["reason"] for r in walled
    ]
    assert all(r["reason"].startswith(verdicts.WALL_REASON) for r in walled)
    assert "served tonight by 4 hosts" in last["cc3m:2/wall.jpg"]["reason"]
    assert "served tonight by 3 hosts" in last["cc3m:6/consent.jpg"]["reason"]
    assert verdicts_of("/ok.jpg") == {(verdicts.ALIVE, None)}
    assert verdicts_of("/placeholder.jpg") == {(verdicts.DEAD, verdicts.GONE)}
    assert all(r["placeholder"] for key, r in last.items() if key.endswith("/placeholder.jpg"))
    assert verdicts_of("/removed.jpg") == {(verdicts.DEAD, verdicts.GONE)}
    assert verdicts_of("/own.jpg") == {(verdicts.DEAD, verdicts.GONE)}
    summary = json.loads((tmp_path / "refresh-2030-02-02" / "summary.json").read_text())
    assert summary["wall_rows"] == 7
    assert [(w["hosts"], w["urls"]) for w in summary["walls"]] == [(4, 4), (3, 3)]
    assert all(len(w["page_sha256"]) == 64 for w in summary["walls"])
    assert summary["host_outages"] == []
    assert summary["verdict_totals"] == {"alive": 4, "changed": 0, "unreachable": 7, "dead": 8}


class NamedHosts:
    """A resolver giving the names alpha.test, bravo.test, ... the loopback addresses 127.0.0.2, ..."""

    def __init__(self, names):
        self._names = names

    async def resolve(self, host, port=0, family=socket.AF_INET):
        address = self._names[host]
        return [{"hostname": host, "host": address, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self):
        pass


def named_challenge(method, headers, count):
    """A CDN challenge naming the site it stands in front of (Cloudflare: "alpha.test needs to
    review the security of your connection before proceeding"), a Ray ID new on every answer."""
    site = headers.get("Host", "").split(":")[0]
    ray = hashlib.sha256(f"{count}{site}".encode()).hexdigest()[:16]
    body = (
        f"<html><head><title>{site}</title></head><body>{site} needs to review the security of your"
        f" connection before proceeding. Ray ID: {ray}</body></html>"
    )
    return Reply(200, body.encode(), HTML)


def test_a_wall_page_naming_each_site_it_stands_in_front_of_is_one_wall(tmp_path):
    """The challenge page names the host it was asked for (no digit in it to blank): one page up to
    the host's name. Before, each host's page was a page of its own, each URL a soft 404, and the 3
    live URLs dead on the second night."""
    names = {name: f"127.0.0.{n}" for n, name in enumerate(("alpha.test", "bravo.test", "charlie.test"), start=2)}
    servers = [SampleWebServer(host=address) for address in names.values()]
    rows = []
    for (name, _), server in zip(names.items(), servers, strict=True):
        server.routes["/wall.jpg"] = named_challenge
        server.routes["/ok.jpg"] = Reply(200, jpeg(90 + len(rows)), JPEG)  # why: no dark night, hosts serve
        rows.append(fetched_ok_row(f"cc3m:{name}/ok.jpg", f"http://{name}:{server.port}/ok.jpg", jpeg(90 + len(rows))))
        rows.append(fetched_ok_row(f"cc3m:{name}", f"http://{name}:{server.port}/wall.jpg", jpeg(len(rows))))
    for server in servers:
        server.__enter__()
    try:
        snapshot = write_snapshot_table(str(tmp_path / "snapshot"), rows)
        with mock.patch.object(address_policy, "ThreadedResolver", lambda: NamedHosts(names)):
            nights = [
                night_status(tmp_path, snapshot, d, **{"allow-network": "127.0.0.0/28"})
                for d in ("2030-02-01", "2030-02-02")
            ]
    finally:
        for server in servers:
            server.__exit__(None, None, None)
    assert {r["status"] for key, r in nights[1].items() if key.endswith("/ok.jpg")} == {verdicts.ALIVE}
    rows = [r for key, r in nights[1].items() if not key.endswith("/ok.jpg")]
    assert len(rows) == 3
    assert {(r["status"], r["failure"]) for r in rows} == {(verdicts.UNREACHABLE, verdicts.TRANSIENT)}, [
        r["reason"] for r in rows
    ]
    assert all("served tonight by 3 hosts" in r["reason"] for r in rows)
