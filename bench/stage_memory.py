"""Where a one-process local run's memory goes, stage by stage (issue 16).

    python -m bench.stage_memory --log OUT.tsv -- -m pipelines.dedup --input IN1 --input IN2 --output OUT3

Runs the module given after `--` in this process (the local FnApi runner in one process, the
dedup job's default), with the runner's `_execute_bundle` wrapped: a thread samples this
process's RSS every 0.1 s and books the peak against the bundle running at the time. Writes one
line per stage (first bundle start s, bundles, RSS MiB before its first bundle, peak MiB during
its bundles, MiB it added to the process's high-water), sorted by start, and prints the ten
stages that raised the high-water most. Memory only: the wrapping costs little time, but the
figures are one process's, so run it without worker processes.
"""

import argparse
import os
import runpy
import sys
import threading
import time

from apache_beam.runners.portability.fn_api_runner import fn_runner


def rss_mib():
    """This process's resident memory now, MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, help="TSV of stages written here")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv[:split])
    target = argv[split + 1 :]
    if target[:1] != ["-m"] or len(target) < 2:
        raise SystemExit("after --: -m MODULE [ARGS]")
    stages, current, started = {}, [None], time.time()
    high = [rss_mib()]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            now = rss_mib()
            name = current[0]
            if name is not None:
                entry = stages[name]
                entry["peak"] = max(entry["peak"], now)
                if now > high[0]:
                    entry["raised"] += now - high[0]
                    high[0] = now
            stop.wait(args.interval)

    original = fn_runner.FnApiRunner._execute_bundle

    def execute_bundle(self, context, bundle_manager, bundle_input):
        name = bundle_manager.stage.name
        entry = stages.setdefault(
            name, {"start": time.time() - started, "bundles": 0, "before": rss_mib(), "peak": 0.0, "raised": 0.0}
        )
        entry["bundles"] += 1
        current[0] = name
        try:
            return original(self, context, bundle_manager, bundle_input)
        finally:
            current[0] = None

    fn_runner.FnApiRunner._execute_bundle = execute_bundle
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sys.argv = [target[1], *target[2:]]
    code = 0
    try:
        runpy.run_module(target[1], run_name="__main__")
    except SystemExit as done:
        code = done.code or 0
    finally:
        stop.set()
        sampler.join()
        rows = sorted(stages.items(), key=lambda kv: kv[1]["start"])
        with open(args.log, "w") as handle:
            handle.write("start_s\tbundles\tbefore_mib\tpeak_mib\traised_mib\tstage\n")
            for name, e in rows:
                handle.write(
                    f"{e['start']:.1f}\t{e['bundles']}\t{e['before']:.0f}\t{e['peak']:.0f}\t{e['raised']:.0f}\t{name}\n"
                )
        print(f"high-water {high[0]:.0f} MiB; stages that raised it most:", file=sys.stderr)
        for name, e in sorted(rows, key=lambda kv: -kv[1]["raised"])[:10]:
            print(f"  +{e['raised']:6.0f} MiB (peak {e['peak']:.0f}) {name[:160]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
