"""The bundled demo sample (`sample/`) and `sample_site`, the loopback web server that serves it (tests use it too)."""

__all__ = ["sample_site"]
