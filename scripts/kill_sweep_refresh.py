"""kill -9 sweep of the nightly refresh (`kill_sweep.py --only refresh`, docs/refresh.md "A rerun
that fails keeps the previous night").

Night 1 is run into REFRESH_OUT with --history; then, on copies, a rerun of the same night
("refresh same night") and the next night ("refresh next night") are killed at spread delays and at
moments of the publish (files appearing aside, the first new status part, summary.json replaced,
the night's _COMPLETE replaced...), the runs killed at a moment pausing 0.3 s after each publish
step (kill_sweep_pause/sitecustomize.py) so the kill lands right after it. After each kill:

- REFRESH_OUT: summary.json present, the status files its "written" names all present and reading
  as one night's reference verdicts ("old"/"new"); extra status files only of the other of the two
  runs ("window": the documented publish window, with what a reader globbing status/*.parquet reads);
- HISTORY: a night with _COMPLETE reads back whole (the files it lists, its row count, the reference
  rows); a next night left without a marker is ignored by a night-3 run ("night3" column: it builds
  on night 1 and gives the verdicts of a night 3 run over night 1 alone);
- the same command again exits 0 with the reference verdicts, REFRESH_OUT and the night whole and
  nothing left aside (no _tmp-*, no lease).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time

import pyarrow.parquet as pq
from kill_sweep import NET, delays, inodes, kill_after, kill_when, run

NIGHT1, NIGHT2, NIGHT3 = "2024-03-01", "2024-03-02", "2024-03-03"
REFRESH_NET = [a for a in NET if a not in ("--no-progress", "--no-report")]  # ingest-only flags
PAUSE = 0.3  # seconds after each publish step of a run killed at an event: the kill lands in it
FIELDS = ("key", "night", "status", "failure", "consecutive_failures", "previous_status", "dead_since")
HISTORY_FIELDS = ("key", "night", "status", "consecutive_failures", "dead_since")


def refresh_args(ctx, out: str, hist: str, night: str) -> list[str]:
    return ["--snapshot", ctx.out_b, "--output", out, "--history", hist, "--night", night, *REFRESH_NET]


def parquet_names(folder: str) -> list[str]:
    """What a reader globbing folder/*.parquet sees (pyarrow skips '_' and '.' names)."""
    return sorted(n for n in map(os.path.basename, glob.glob(os.path.join(folder, "*.parquet"))) if n[0] not in "_.")


def rows_of(folder: str, names: list[str], fields=FIELDS, drop=()) -> list[tuple]:
    if not names:
        return []
    table = pq.read_table([os.path.join(folder, n) for n in names], columns=list(fields))
    keep = [f for f in fields if f not in drop]
    return sorted(tuple(str(row[f]) for f in keep) for row in table.to_pylist())


def run_of(name: str) -> str:
    return name.split("-")[1]  # part-<run>-NNNNN-of-MMMMM.parquet


def read_summary(out: str) -> dict | None:
    try:
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def out_state(out: str, old_written: list[str], ref_old: list, ref_new: list) -> str:
    """'old'/'new' (one night whole), 'window: ...' (the documented publish window), or 'FAIL ...'."""
    present = parquet_names(os.path.join(out, "status"))
    summary = read_summary(out)
    if summary is None:
        return f"FAIL no summary.json, {len(present)} status files"
    written = summary["written"]
    if set(written) - set(present):
        return f"FAIL summary names missing files {sorted(set(written) - set(present))[:2]}"
    rows = rows_of(os.path.join(out, "status"), written)
    label = "old" if written == old_written else "new"
    if rows != (ref_old if label == "old" else ref_new):
        return f"FAIL the summary's files read as neither night ({len(rows)} rows)"
    mine, old_run = run_of(written[0]), run_of(old_written[0])
    hosts = parquet_names(os.path.join(out, "hosts"))
    if not any(run_of(n) == mine for n in hosts):
        return f"FAIL no hosts file of the summary's run ({hosts})"
    extra = sorted(set(present) - set(written))
    extra_hosts = [n for n in hosts if run_of(n) != mine]
    if not extra and not extra_hosts:
        return label
    other = "new" if label == "old" else "old"
    others = {run_of(n) for n in extra + extra_hosts}
    if (label == "new" and others != {old_run}) or len(others) > 1:
        return f"FAIL files of a third run beside the summary's: {extra + extra_hosts}"
    seen = rows_of(os.path.join(out, "status"), present)
    keys = {r[0] for r in seen}
    return (
        f"window: {label} summary + {len(extra)} {other} status, {len(extra_hosts)} {other} hosts file(s);"
        f" glob reads {len(seen)} rows, {len(keys)} keys"
    )


def history_state(hist: str, night: str, old_files: list[str] | None, refs: dict) -> str:
    """The night: 'old'/'new' (marker whole, reference rows), 'unmarked ...', 'absent', 'FAIL ...';
    '+N unlisted' when files no marker lists sit beside it. Every other night must be whole."""
    states = []
    for name in sorted(os.listdir(hist)):
        folder = os.path.join(hist, name)
        present = parquet_names(folder)
        aside = bool(glob.glob(os.path.join(folder, "_tmp-*")))
        try:
            with open(os.path.join(folder, "_COMPLETE"), encoding="utf-8") as handle:
                marker = json.load(handle)
        except FileNotFoundError:
            states.append((name, f"unmarked ({len(present)} parquet{', aside' if aside else ''})"))
            continue
        listed = marker["files"]
        if set(listed) - set(present):
            states.append((name, f"FAIL marker lists missing {sorted(set(listed) - set(present))[:2]}"))
            continue
        rows = rows_of(folder, listed, HISTORY_FIELDS)
        label = "whole" if name != night else "old" if listed == old_files else "new"
        if len(rows) != marker["rows"] or rows != refs[name]:
            states.append((name, f"FAIL {label} night reads {len(rows)} rows, not the reference"))
            continue
        extra = len(set(present) - set(listed))
        states.append((name, label + (f" +{extra} unlisted" if extra else "") + (" +aside" if aside else "")))
    mine = dict(states).get(night, "absent")
    others = [f"{n}: {s}" for n, s in states if n != night and s != "whole"]
    return "; ".join([mine, *others])


def history_rows(hist: str, night: str) -> list[tuple]:
    folder = os.path.join(hist, night)
    with open(os.path.join(folder, "_COMPLETE"), encoding="utf-8") as handle:
        return rows_of(folder, json.load(handle)["files"], HISTORY_FIELDS)


def leftovers(out: str, hist: str, night: str) -> list[str]:
    found = glob.glob(os.path.join(out, "_tmp-*")) + glob.glob(os.path.join(out, "*", "_tmp-*"))
    found += glob.glob(os.path.join(out, "summary.json.tmp-*")) + glob.glob(os.path.join(out, "_LEASE*"))
    found += glob.glob(os.path.join(hist, night, "_tmp-*")) + glob.glob(os.path.join(hist, night, "_COMPLETE.tmp-*"))
    return [os.path.relpath(p, os.path.dirname(out)) for p in found]


def check_rerun(ctx, out: str, hist: str, night: str, code: int, line: str, ref: list, hist_ref: list) -> str:
    if code != 0:
        return f"FAIL exit {code}: {line[:120]}"
    summary = read_summary(out)
    present = parquet_names(os.path.join(out, "status"))
    if summary is None or summary["written"] != present:
        return f"FAIL status files {present} vs summary {summary and summary['written']}"
    if rows_of(os.path.join(out, "status"), present) != ref:
        return "FAIL verdicts differ from the uninterrupted run's"
    hosts = {run_of(n) for n in parquet_names(os.path.join(out, "hosts"))}
    if hosts != {run_of(present[0])}:
        return f"FAIL hosts files of runs {sorted(hosts)}"
    folder = os.path.join(hist, night)
    with open(os.path.join(folder, "_COMPLETE"), encoding="utf-8") as handle:
        listed = json.load(handle)["files"]
    if parquet_names(folder) != listed or history_rows(hist, night) != hist_ref:
        return f"FAIL history night: {parquet_names(folder)} vs marker {listed}"
    left = leftovers(out, hist, night)
    return "FAIL leftovers " + str(left) if left else "ok"


def night3_check(ctx, hist: str) -> str:
    """A night-3 run over this history: an unmarked night 2 must be ignored (built on night 1)."""
    copy, out = hist + "-n3", hist + "-n3out"
    shutil.copytree(hist, copy)
    code, line = run("refresh", refresh_args(ctx, out, copy, NIGHT3))
    summary = read_summary(out) if code == 0 else None
    result = f"FAIL exit {code}: {line[:80]}" if code else "ok"
    if summary is not None and (
        summary["previous_night"] != NIGHT1 or rows_of(os.path.join(out, "status"), summary["written"]) != ctx.ref_n3
    ):
        result = f"FAIL night 3 built on {summary['previous_night']} or other verdicts"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def events(out: str, hist: str, night: str) -> dict:
    """Kill moments of a refresh publish: name -> condition (REFRESH_OUT and the history night)."""
    status, hosts, folder = os.path.join(out, "status"), os.path.join(out, "hosts"), os.path.join(hist, night)
    before = {"status": set(parquet_names(status)), "hosts": set(parquet_names(hosts))}
    before["night"] = set(parquet_names(folder)) if os.path.isdir(folder) else set()
    summary, marker = inodes(out, "summary.json"), inodes(folder, "_COMPLETE")

    def aside(root, name="**"):
        return lambda: any(os.path.isfile(p) for p in glob.glob(os.path.join(root, "_tmp-*", name), recursive=True))

    def new(part, folder, n=1):
        return lambda: len(set(parquet_names(folder)) - before[part]) >= n

    found = {
        "file aside (out)": aside(out),
        "file aside (night)": aside(folder),
        "summary aside": aside(out, "summary.json"),
        "marker aside": aside(folder, "marker.json"),
        "first new status part": new("status", status),
        "second new status part": new("status", status, 2),
        "new hosts part": new("hosts", hosts),
        "summary replaced": lambda: inodes(out, "summary.json") not in (summary, {}),
        "an old status part gone": lambda: bool(before["status"] - set(parquet_names(status))),
        "first new part in night": new("night", folder),
        "second new part in night": new("night", folder, 2),
        "_COMPLETE replaced": lambda: inodes(folder, "_COMPLETE") not in (marker, {}),
    }
    if before["night"]:
        found["an old night part gone"] = lambda: bool(before["night"] - set(parquet_names(folder)))
    return found


def prepare_refresh(ctx) -> None:
    """Night 1 (the base), and uninterrupted references: night 1 again, night 2, night 3 over night 1."""
    ctx.r_base, ctx.h_base = os.path.join(ctx.work, "r-base"), os.path.join(ctx.work, "h-base")
    assert run("refresh", refresh_args(ctx, ctx.r_base, ctx.h_base, NIGHT1))[0] == 0
    ctx.ref_n1 = rows_of(os.path.join(ctx.r_base, "status"), read_summary(ctx.r_base)["written"])
    ctx.hist_n1 = history_rows(ctx.h_base, NIGHT1)
    ctx.t_refresh = {}
    for night in (NIGHT1, NIGHT2):
        out, hist = os.path.join(ctx.work, f"r-ref-{night}"), os.path.join(ctx.work, f"h-ref-{night}")
        shutil.copytree(ctx.r_base, out)
        shutil.copytree(ctx.h_base, hist)
        started = time.monotonic()
        assert run("refresh", refresh_args(ctx, out, hist, night))[0] == 0
        ctx.t_refresh[night] = time.monotonic() - started
        rows = rows_of(os.path.join(out, "status"), read_summary(out)["written"])
        if night == NIGHT1:
            assert rows == ctx.ref_n1 and history_rows(hist, night) == ctx.hist_n1, "a rerun of night 1 differs"
        else:
            ctx.ref_n2, ctx.hist_n2 = rows, history_rows(hist, night)
    hist = os.path.join(ctx.work, "h-ref-n3")
    shutil.copytree(ctx.h_base, hist)
    out = os.path.join(ctx.work, "r-ref-n3")
    assert run("refresh", refresh_args(ctx, out, hist, NIGHT3))[0] == 0
    ctx.ref_n3 = rows_of(os.path.join(out, "status"), read_summary(out)["written"])
    assert ctx.ref_n2 != ctx.ref_n1, "night 2's verdicts cannot be told from night 1's"
    print(
        f"refresh references: night 1 again {ctx.t_refresh[NIGHT1]:.1f}s, night 2 {ctx.t_refresh[NIGHT2]:.1f}s;"
        f" rows {len(ctx.ref_n1)}",
        flush=True,
    )


def sweep_refresh(ctx, points):
    prepare_refresh(ctx)
    old_written = read_summary(ctx.r_base)["written"]
    with open(os.path.join(ctx.h_base, NIGHT1, "_COMPLETE"), encoding="utf-8") as handle:
        old_marker = json.load(handle)["files"]
    results = []
    for night, job in ((NIGHT1, "refresh same night"), (NIGHT2, "refresh next night")):
        ref = ctx.ref_n1 if night == NIGHT1 else ctx.ref_n2
        refs = {NIGHT1: ctx.hist_n1, NIGHT2: ctx.hist_n2}
        names = list(events(ctx.r_base, ctx.h_base, night))
        for i, point in enumerate([*delays(ctx.t_refresh[night] * 1.05, points), *names]):
            out, hist = os.path.join(ctx.work, f"r{night[-1]}-{i}"), os.path.join(ctx.work, f"h{night[-1]}-{i}")
            shutil.copytree(ctx.r_base, out)
            shutil.copytree(ctx.h_base, hist)
            args = refresh_args(ctx, out, hist, night)
            if isinstance(point, str):
                killed = kill_when("refresh", args, events(out, hist, night)[point], PAUSE)
            else:
                killed = kill_after("refresh", args, point)
            got = out_state(out, old_written, ctx.ref_n1, ref)
            night_state = history_state(hist, night, old_marker if night == NIGHT1 else None, refs)
            bad = got.startswith("FAIL") or "FAIL" in night_state
            state = ("FAIL " if bad else "") + f"out {got} | night {night_state}"
            third = night3_check(ctx, hist) if night_state.startswith("unmarked") else "-"
            rerun = check_rerun(ctx, out, hist, night, *run("refresh", args), ref, refs[night])
            results.append((job, point, killed, state, third, rerun, "-"))
            print(results[-1], flush=True)
    return results
