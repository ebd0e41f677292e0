"""Opening any Beam path (local, gs://, .gz) as an ordinary buffered binary stream."""
import contextlib
import io

from apache_beam.io.filesystems import FileSystems


class _RawAdapter(io.RawIOBase):
    """Beam's handles (CompressedFile for .gz, GCS readers) lack iteration and read1; this lets
    io.BufferedReader supply them, so csv/TextIOWrapper and line iteration just work."""

    def __init__(self, handle):
        self._handle = handle

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._handle.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_stream(path, buffer_size=1 << 20):
    """Streams `path` (compression detected from its name), never reading it whole."""
    with FileSystems.open(path) as handle:
        yield io.BufferedReader(_RawAdapter(handle), buffer_size)
