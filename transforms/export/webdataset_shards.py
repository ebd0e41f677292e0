"""WebDataset shards: EXP/00000.tar, ... with <key>.<jpg|png|webp>, <key>.txt and <key>.json a sample.

The layout OpenCLIP, DataComp and img2dataset's `webdataset` output use: the members of a sample
are consecutive, named by the sample key (digits, no dots) and an extension. The .json holds the
table's `key` (the mapping back to OUT/images), dataset, url, caption, sha256 and phash of the
original, width and height after resizing, original_width, original_height, labels, cluster_id.
Tar members carry a fixed mtime and owner, so a re-run writes byte-identical shards.
"""

import io
import json
import tarfile

from transforms.export.resize import ExportedImage
from transforms.export.shard_writer import ShardWriterDoFn, sample_metadata

__all__ = ["WebDatasetShardDoFn"]

_MTIME = 946684800  # 2000-01-01: fixed, so that shards are reproducible byte for byte


class WebDatasetShardDoFn(ShardWriterDoFn):
    """(shard, items) -> EXP/<shard>.tar (see ShardWriterDoFn for the two-phase write)."""

    extension = "tar"

    def open_shard(self, handle):
        # "w|": a stream, written straight to the (possibly remote, unseekable) temporary file
        return tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT)

    def write_sample(self, writer, key: str, record: dict, image: ExportedImage):
        metadata = sample_metadata(key, record, image)
        _add(writer, f"{key}.{image.extension}", image.data)
        _add(writer, f"{key}.txt", (record.get("caption") or "").encode("utf-8"))
        _add(writer, f"{key}.json", json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8"))

    def close_shard(self, writer):
        writer.close()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MTIME
    info.mode = 0o444
    info.uname = info.gname = "export"
    tar.addfile(info, io.BytesIO(data))
