"""Throughput and memory of the issue-4 parsers on synthetic files of real-world shape.

    python -m bench.bench_formats [--imagenet 463000] [--labels 1000000] [--dreamlip 100000]
                                  [--zero 200000] [--workdir bench/work]

One process, one core, no Beam: these are the per-worker costs inside the DoFns. Peak RSS is
reported to show that the 463K-object imagenet_captions.json array is streamed (RSS stays far
below the file size), not loaded.
"""

import argparse
import csv
import json
import os
import resource
import time

from transforms.io import json_manifests, labels, readers


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_imagenet(path, n):
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            wnid = f"n{1440764 + i % 1000:08d}"
            rec = {
                "filename": f"{wnid}_{i}.JPEG",
                "title": f"Photo {i}\r\nof a thing",
                "tags": ["tag", "musée", f"t{i % 97}"],
                "description": 'line\nline, "q"',
                "wnid": wnid,
            }
            f.write(("    " if i == 0 else ",\n    ") + json.dumps(rec))
        f.write("\n]\n")


def _write_labels(path, n):
    with open(path, "w", encoding="utf-8") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        for i in range(n):
            f.write(f"{i // 8:016x},{'machine' if i % 3 else 'verification'},/m/0{i % 5000:05d},{(i % 10) / 10}\n")


def _write_dreamlip(path, n):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "Image Path",
                "raw_caption",
                "shortIB_captions",
                "longIB_captions",
                "shortSV_captions",
                "longSV_captions",
                "shortLLA_captions",
                "longLLA_captions",
            ]
        )
        long = ('A long caption, with commas and "quotes",\nspanning lines. ' * 4).strip()
        for i in range(n):
            w.writerow([f"http://127.0.0.1/{i}.jpg", "raw", "short", long, "short", long, "short", long])


def _write_zero(path, n):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "Url": f"http://127.0.0.1/p/{i}",
                        "Title": "西湖春天的美景，游客如织",
                        "Content": "杭州西湖，“人间天堂”。\n春天桃花盛开。",
                        "Keywords": "西湖,春天",
                        "ImageKey": f"{i:016x}",
                        "ImageUrl": f"http://127.0.0.1/z/{i}.jpg",
                        "ImageQuery": "西湖",
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def _timed(name, path, count_fn):
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    n = count_fn(path)
    dt = time.perf_counter() - t0
    return {
        "format": name,
        "records": n,
        "file_mb": round(os.path.getsize(path) / 2**20, 1),
        "seconds": round(dt, 2),
        "records_per_s": round(n / dt),
        "peak_rss_mb": round(_rss_mb(), 1),
        "peak_rss_growth_mb": round(_rss_mb() - rss0, 1),
    }


def _count_imagenet(path):
    with readers.open_path(path) as f:
        return sum(1 for _ in json_manifests.parse_imagenet_captions(f, path, "/r", {}))


def _count_labels(path):
    with open(path, encoding="utf-8") as f:  # the DoFn gets lines from ReadFromText
        return sum(len(labels.parse_openimages_label_line(line.rstrip("\n"))) for line in f)


def _count_dreamlip(path):
    csv.field_size_limit(1 << 24)
    with readers.open_path(path) as f:
        return sum(1 for _ in labels.parse_long_captions(f))


def _count_zero(path):
    with readers.open_path(path) as f:
        return sum(1 for _ in json_manifests.parse_zero(f, path))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", type=int, default=463_000)
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--dreamlip", type=int, default=100_000)
    parser.add_argument("--zero", type=int, default=200_000)
    parser.add_argument("--workdir", default=os.path.join("bench", "work"))
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    jobs = [
        ("imagenet_captions.json", args.imagenet, _write_imagenet, _count_imagenet),
        ("openimages labels csv", args.labels, _write_labels, _count_labels),
        ("dreamlip csv", args.dreamlip, _write_dreamlip, _count_dreamlip),
        ("zero jsonl", args.zero, _write_zero, _count_zero),
    ]
    for name, n, write, count in jobs:
        path = os.path.join(args.workdir, name.replace(" ", "_"))
        write(path, n)
        print(json.dumps(_timed(name, path, count), ensure_ascii=False), flush=True)
        os.remove(path)


if __name__ == "__main__":
    main()
