"""URL normalisation for exact-URL deduplication. No transforms: `normalize_url` is a pure function."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["normalize_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str | None) -> str | None:
    """The form under which two manifest URLs count as the same image address.

    * surrounding whitespace stripped;
    * scheme and host lowercased (path, query and their case kept: servers may be case-sensitive);
    * http and https are one: both become "http" (CC3M and CC12M list the same Flickr photo
      under either);
    * the default port (80 for http, 443 for https) dropped, as is any "user:pass@" part;
    * the fragment (#...) dropped: it never reaches the server;
    * an empty path becomes "/".
    Anything that is not an http(s) URL (ImageNet file paths, garbage) comes back stripped and
    otherwise unchanged; None and "" give None.
    """
    if url is None:
        return None
    url = url.strip()
    if not url:
        return None
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return url
        port = parts.port
    except ValueError:  # e.g. a bad IPv6 literal or a non-numeric port
        return url
    host = parts.hostname  # lowercased by urlsplit, brackets of IPv6 removed
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"http://{host}{path}{query}"
