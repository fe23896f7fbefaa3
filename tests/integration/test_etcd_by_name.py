"""A real etcd reached through a DNS target, the way containers name it (`etcd:2379`)."""

from __future__ import annotations

import socket

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.etcd_client import new_etcd_client, normalize_endpoints


async def test_a_host_name_endpoint_reaches_etcd(infra: LocalInfra, namespace: str) -> None:
    port = normalize_endpoints(infra.etcd_url)[0].rpartition(":")[2]
    # "localhost" itself is turned into 127.0.0.1; a name of this machine that
    # resolves to the loopback address goes through gRPC's DNS resolver instead.
    name = next((n for n in ("localhost.", socket.gethostname()) if _resolves_to_loopback(n)), None)
    if name is None:
        pytest.skip("no host name of this machine resolves to 127.0.0.1")
    client = new_etcd_client([f"{name}:{port}"])
    assert client._manager.target == f"dns:///{name}:{port}"
    await client.connect()
    try:
        key = f"tandem/{namespace}/test/by-name"
        await client.kv.put(key, b"1")  # type: ignore[union-attr]
        resp = await client.kv.get(key)  # type: ignore[union-attr]
        assert [kv.value for kv in resp.kvs] == [b"1"]
    finally:
        await client.close()


def _resolves_to_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except OSError:
        return False
    return any(info[4][0] == "127.0.0.1" for info in infos)
