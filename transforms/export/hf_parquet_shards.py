"""Hugging Face Parquet shards: EXP/00000.parquet, ... that `datasets` reads as an Image dataset.

`image` is struct<bytes: binary, path: string>, the Arrow form of the `datasets` Image feature,
and the schema metadata carries the features ({"huggingface": {"info": {"features": ...}}}), so
`datasets.load_dataset("parquet", data_files=...)` yields PIL images without a features argument.
Written without importing `datasets` (not a dependency of the workers): the metadata is plain
JSON, in the list form every `datasets` release reads. Row groups of `ROW_GROUP_ROWS` rows keep
a reader's memory to a few MB, as the Hub's own image Parquet files do.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from transforms import schema
from transforms.export.resize import ExportedImage
from transforms.export.shard_writer import ShardWriterDoFn, sample_metadata

__all__ = ["HF_FEATURES", "HF_SCHEMA", "HfParquetShardDoFn", "ROW_GROUP_ROWS"]

ROW_GROUP_ROWS = 64

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_FIELDS = [
    ("image", _IMAGE_TYPE),
    ("key", pa.string()),
    ("sample_key", pa.string()),
    ("dataset", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("labels", pa.list_(schema.LABEL_TYPE)),
    ("sha256", pa.string()),
    ("phash", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("cluster_id", pa.string()),
]
_ARROW_TO_HF = {pa.string(): "string", pa.int32(): "int32", pa.float32(): "float32"}


def _hf_feature(arrow_type):
    if arrow_type == _IMAGE_TYPE:
        return {"_type": "Image"}
    if pa.types.is_list(arrow_type):
        return [_hf_feature(arrow_type.value_type)]
    if pa.types.is_struct(arrow_type):
        return {field.name: _hf_feature(field.type) for field in arrow_type}
    return {"dtype": _ARROW_TO_HF[arrow_type], "_type": "Value"}


HF_FEATURES = {name: _hf_feature(arrow_type) for name, arrow_type in _FIELDS}
HF_SCHEMA = pa.schema(_FIELDS, metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


class HfParquetShardDoFn(ShardWriterDoFn):
    """(shard, items) -> EXP/<shard>.parquet (see ShardWriterDoFn for the two-phase write)."""

    extension = "parquet"

    def open_shard(self, handle):
        return {"writer": pq.ParquetWriter(handle, HF_SCHEMA, compression="zstd", write_page_checksum=True), "rows": []}

    def write_sample(self, writer, key: str, record: dict, image: ExportedImage):
        row = sample_metadata(key, record, image)
        # why: the datasets Image feature applies an EXIF orientation left in original bytes on
        # decode (webdataset's decode("pil") does not): the sizes are those of the picture it gives
        row["width"], row["height"] = image.displayed_size
        row["image"] = {"bytes": image.data, "path": f"{key}.{image.extension}"}
        writer["rows"].append(row)
        if len(writer["rows"]) >= ROW_GROUP_ROWS:
            _flush(writer)

    def close_shard(self, writer):
        _flush(writer)
        writer["writer"].close()


def _flush(writer: dict) -> None:
    if writer["rows"]:
        writer["writer"].write_table(pa.Table.from_pylist(writer["rows"], schema=HF_SCHEMA))
        writer["rows"] = []
