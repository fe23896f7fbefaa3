"""A real process holding a KV pool behind the KV transfer plane, driven over stdin/stdout.

`python -m tests.support.kv_peer --etcd URL --namespace NS --instance-id ID
--transport nixl|grpc [--num-blocks N --head-dim D --seed S]`: a pool of
known bytes (random from `seed`, zeros without), a real gRPC server with the
`KvTransfer` service, its descriptor in real etcd under a real lease. Then
one JSON command per stdin line, one JSON answer per stdout line:

    {"op": "expect", "id": T, "dst": [...]}      -> {"ok": true}
    {"op": "send", "id": T, "peer": ID, "endpoint": E, "src": [...], "dst": [...]}
                                                 -> {"ok": true, "bytes": n} | {"ok": false, "error": s}
    {"op": "digest", "blocks": [...]}            -> {"ok": true, "digest": sha256}
    {"op": "landed", "id": T}                    -> {"ok": true, "landed": bool}

"sending" is printed ({"event": "sending"}) when a send has started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from tandem.runtime.discovery import Discovery
from tandem.runtime.grpc_util import start_server
from tandem.worker.kv_transfer.config import KvTransferConfig
from tandem.worker.kv_transfer.plane import KvTransferPlane
from tandem.worker.kv_transfer.transport import PeerInfo, TransferError

from tests.support.kv_transfer import block_digest, make_pool

PREFIX = "@kv_peer "
"""Marks the answers on stdout (NIXL's own logging may print there too)."""


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    discovery = Discovery(args.etcd, args.namespace)
    await discovery.start()
    pool = make_pool(args.num_blocks, head_dim=args.head_dim, seed=args.seed)
    config = KvTransferConfig(kv_transport=args.transport, kv_transfer_timeout=args.timeout)
    plane = KvTransferPlane(args.instance_id, args.namespace, config, discovery.client)
    plane.start(pool)
    server, port = await start_server(plane.add_to_server, "127.0.0.1", 0)
    endpoint = f"127.0.0.1:{port}"
    await plane.publish(discovery, endpoint)
    _say({"event": "ready", "endpoint": endpoint})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "expect":
                plane.receiver.expect(cmd["id"], cmd["dst"])
                _say({"ok": True})
            elif op == "send":
                _say({"event": "sending"})
                try:
                    stats = await plane.send_blocks(
                        PeerInfo(cmd["peer"], cmd["endpoint"]), cmd["src"], cmd["dst"],
                        transfer_id=cmd["id"],
                    )  # fmt: skip
                    _say({"ok": True, "bytes": stats.num_bytes})
                except TransferError as exc:
                    _say({"ok": False, "error": str(exc)})
            elif op == "digest":
                _say({"ok": True, "digest": block_digest(pool, cmd["blocks"])})
            elif op == "landed":
                _say({"ok": True, "landed": plane.receiver.landed(cmd["id"])})
    finally:
        await plane.close()
        await server.stop(None)
        await discovery.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--transport", choices=("nixl", "grpc"), required=True)
    parser.add_argument("--num-blocks", type=int, default=64)
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
