"""Fetching image bytes over HTTP(S), safely and politely.

- `client`: `Fetcher` (asyncio + aiohttp on a thread), `FetchConfig`, politeness, `FetchImages`.
- `address_policy`: which addresses a fetch may connect to, checked after DNS and every redirect.
"""

__all__ = ["address_policy", "client"]
