"""Which network addresses a fetch may connect to (SSRF protection).

By default only globally routable unicast addresses are allowed: a manifest is untrusted input, and
on a cloud worker a URL naming 169.254.169.254 or 10.x would read the metadata server or the VPC.
The check runs on every address a name resolves to, for the first hop and after every redirect, and
the connection then goes to exactly the checked address (aiohttp connects to what the resolver
returned), so DNS rebinding between check and connect is not possible.

Public: `AddressPolicy` (the rule), `GuardedResolver` (aiohttp's resolver under it),
`legacy_ipv4`, `BlockedAddressError`. No Beam transforms here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

__all__ = ["BlockedAddressError", "AddressPolicy", "legacy_ipv4", "GuardedResolver"]


class BlockedAddressError(OSError):
    """The URL's host resolves to an address the policy refuses."""


def _describe(addr):
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local (cloud metadata range)"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    return "non-public"


class AddressPolicy:
    """Public unicast addresses, plus the networks of `--allow-network`."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed_networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)

    def refusal(self, address: str) -> str | None:
        """None if `address` may be connected to, else a short reason."""
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"unparseable address {address!r}"
        # ::ffff:127.0.0.1 and friends reach the IPv4 address they embed.
        if isinstance(addr, ipaddress.IPv6Address):
            embedded = addr.ipv4_mapped or addr.sixtofour
            if embedded is not None:
                addr = embedded
        if any(addr in net for net in self.allowed_networks):
            return None
        if addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified):
            return None
        return f"address {addr} is {_describe(addr)}; refused unless --allow-network allows it"

    def check_literal(self, host: str) -> str | None:
        """For an IP-literal host (aiohttp does not resolve those): the refusal, or None."""
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return None
        return self.refusal(host.strip("[]"))


def legacy_ipv4(host: str) -> str | None:
    """The dotted quad a legacy numeric host means ("2130706433", "127.1", "0x7f.0.0.1"), else None.

    getaddrinfo and browsers read these as IPv4 addresses; aiohttp refuses to connect to them, so
    the fetcher judges them by the address they stand for and connects to its canonical form.
    """
    if not host or ":" in host or not all(part and part[0].isdigit() for part in host.split(".")):
        return None
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    canonical = socket.inet_ntoa(packed)
    return canonical if canonical != host else None


class GuardedResolver(AbstractResolver):
    """Resolves with getaddrinfo and hands aiohttp only the addresses the policy allows.

    aiohttp connects to exactly what this returns, so a refused address is never contacted
    (`localhost` with 127.0.0.1/32 allowed reaches 127.0.0.1, never ::1); a name with no
    allowed address is refused as a whole.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._resolver = ThreadedResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        results = await self._resolver.resolve(host, port, family)
        allowed = [result for result in results if self._policy.refusal(result["host"]) is None]
        if not allowed:
            raise BlockedAddressError(f"{host} resolves to {self._policy.refusal(results[0]['host'])}")
        return allowed

    async def close(self):
        await self._resolver.close()
