"""The etcd client's gRPC target: addresses as etcd3aio writes them, host names through DNS."""

from __future__ import annotations

from tandem.runtime.etcd_client import _resolve, channel_target, new_etcd_client


def test_addresses_keep_the_ipv4_target() -> None:
    assert channel_target(["10.0.0.1:2379", "10.0.0.2:2379"]) == "ipv4:10.0.0.1:2379,10.0.0.2:2379"


def test_localhost_is_the_loopback_address() -> None:
    assert channel_target(["localhost:2379"]) == "ipv4:127.0.0.1:2379"


def test_one_host_name_goes_to_the_dns_resolver() -> None:
    # gRPC refuses `ipv4:etcd:2379`: a compose or Kubernetes service name needs `dns:`.
    assert channel_target(["etcd:2379"]) == "dns:///etcd:2379"


def test_several_names_are_resolved_to_their_addresses() -> None:
    assert _resolve("localhost:2379") == ["127.0.0.1:2379"]
    assert (
        channel_target(["10.0.0.1:2379", "localhost:2380"]) == "ipv4:10.0.0.1:2379,127.0.0.1:2380"
    )


def test_the_client_uses_the_target() -> None:
    client = new_etcd_client(["etcd:2379"])
    assert client._manager.target == "dns:///etcd:2379"
