"""Which files a path or glob names, local or gs://: each file once, never a folder placeholder.

- `matched_files(pattern)`: the matched paths, sorted, at launch (manifests, checks, hash lists).
- `MatchFiles(patterns)`: PBegin -> Beam `FileMetadata` of every file the patterns match, each
  file once (the side-file readers: transforms/io/readers.py).
- `is_folder_placeholder(path)`, `normalise_path(path)`, `path_identity(path)`: what a matched
  path is, and one spelling per file for telling whether two paths name one.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

__all__ = ["is_folder_placeholder", "matched_files", "normalise_path", "path_identity", "MatchFiles"]


def is_folder_placeholder(path: str) -> bool:
    """Whether a matched path is a gs:// folder placeholder, no file.

    Args:
        path: a path a listing returned.

    Returns:
        True for an object store's name ending in `/`: the empty object the Cloud Console's
        "Create folder" leaves (`in/`), which `in/*` matches.
    """
    return "://" in path and path.endswith("/")


def matched_files(pattern: str) -> list[str]:
    """The files a path or glob (local or gs://) matches, sorted, without gs:// folder placeholders.

    Args:
        pattern: a path or a glob.

    Returns:
        The matched paths; [] when none.
    """
    # why: `in/`, the empty object the Cloud Console's "Create folder" leaves, matches `in/*`; taken
    # for a manifest it failed the ingest (its name normalised to `in`: no such object, exit 1).
    return sorted(
        m.path
        for result in FileSystems.match([pattern])
        for m in result.metadata_list
        if not is_folder_placeholder(m.path)
    )


def normalise_path(path: str) -> str:
    """One spelling per file: absolute and normalised locally (`a/../a/x` -> `/cwd/a/x`);
    `//`, `.` and `..` resolved in a gs:// object name.

    Args:
        path: a local or gs:// path.

    Returns:
        The path so spelt.
    """
    if "://" in path:
        scheme, rest = path.split("://", 1)
        bucket, _, name = rest.partition("/")
        name = posixpath.normpath("/" + name).lstrip("/")
        return f"{scheme}://{bucket}/{name}"
    return os.path.abspath(path)


def path_identity(path: str) -> str:
    """One spelling per file or folder, for telling whether two paths name one: locally absolute
    with symlinks, `..` and `//` resolved (`out`, `./out/`, a link to it are one); on gs:// the
    object name's `//`, `.` and `..` resolved, without a trailing slash.

    Args:
        path: a local or gs:// path.

    Returns:
        The identity: equal for two paths of one file.
    """
    if "://" in path:
        return normalise_path(path).rstrip("/")
    return os.path.realpath(path)


def _first_by_path(metadata: Iterable[Any]) -> Any:
    """The metadata of the smallest path among one file's names: the same whatever order they come."""
    return min(metadata, key=lambda m: m.path)


class MatchFiles(beam.PTransform):
    """PBegin -> `FileMetadata` of every file one or more paths/globs match, each file once."""

    # why: Beam's MatchAll hands on a file once per pattern matching it and the gs:// folder
    # placeholder as a file: two overlapping `--openimages-labels` globs read a labels file twice
    # (its lines counted twice in summary.json), and `gs://b/lab/*` over a Console-made folder
    # failed the ingest (exit 1) where the same glob as a manifest skipped it (matched_files).

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> fileio.MatchAll()
            | "NoPlaceholders" >> beam.Filter(lambda metadata: not is_folder_placeholder(metadata.path))
            | "ByIdentity" >> beam.Map(lambda metadata: (path_identity(metadata.path), metadata))
            | "Once" >> beam.CombinePerKey(_first_by_path)
            | "Files" >> beam.Values()
        )
