"""Pictures known to stand in for a photo that is gone: shared by dedup (flagged, not counted as
duplicates) and refresh (a URL serving one is dead)."""

import dataclasses

__all__ = ["Placeholder", "KNOWN_PLACEHOLDERS", "known_placeholder_hashes"]


@dataclasses.dataclass(frozen=True)
class Placeholder:
    """A known stand-in picture: a name, and its sha256 and/or pHash (hex)."""

    name: str
    sha256: str | None = None
    phash: str | None = None


# Pictures that stand in for a photo that is gone (exact pHash match). A uniform picture (a 1x1
# spacer GIF, a blank frame) has pHash 0 or 8000000000000000 whatever its size and colour: no photo
# looks like that. Site-specific placeholders are recognised by where the URL redirects (below), by
# the many-URLs rule (`placeholder_votes`), or by hashes given with --placeholder.
KNOWN_PLACEHOLDERS = (
    Placeholder("blank picture", phash="0000000000000000"),
    Placeholder("blank picture", phash="8000000000000000"),
    # pipelines/demo/sample_site.py: placeholder_png(), the bundled sample's stand-in for Flickr's picture
    Placeholder("'photo unavailable' picture of the bundled sample", phash="e93192c6ce93396c"),
)


def known_placeholder_hashes() -> tuple[str, ...]:
    """pHashes and sha256s of KNOWN_PLACEHOLDERS, as dedup's `placeholder_hashes` takes them."""
    return tuple(h for p in KNOWN_PLACEHOLDERS for h in (p.phash, p.sha256) if h)
