import asyncio
import socket

import pytest

from transforms.fetch.address_policy import AddressPolicy, BlockedAddressError, GuardedResolver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.0.2",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "ff02::1",
        "::",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert AddressPolicy().refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert AddressPolicy().refusal(address) is None


def test_allow_network_opens_exactly_that_network():
    policy = AddressPolicy(["127.0.0.1/32"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("127.0.0.2") is not None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the same address, IPv6-mapped


def test_refusal_names_the_kind_of_address():
    assert "link-local" in AddressPolicy().refusal("169.254.169.254")
    assert "private" in AddressPolicy().refusal("10.0.0.1")


def test_literal_check_only_judges_ip_literals():
    policy = AddressPolicy()
    assert policy.check_literal("example.com") is None
    assert policy.check_literal("[::1]") is not None
    assert policy.check_literal("127.0.0.1") is not None


def test_resolver_refuses_names_that_resolve_inside():
    async def resolve(policy):
        resolver = GuardedResolver(policy)
        try:
            return await resolver.resolve("localhost", 80, socket.AF_INET)
        finally:
            await resolver.close()

    with pytest.raises(BlockedAddressError):
        asyncio.run(resolve(AddressPolicy()))
    assert asyncio.run(resolve(AddressPolicy(["127.0.0.0/8"])))[0]["host"].startswith("127.")
