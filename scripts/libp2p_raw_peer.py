"""A hostile raw py-libp2p peer: dial a node and write bad frames straight onto its gossipsub protocol stream.

    python scripts/libp2p_raw_peer.py /ip4/127.0.0.1/tcp/PORT/p2p/12D3Koo... [--frames garbage oversize big]

Frames (each on a fresh /meshsub/1.1.0 stream, varint length-prefixed as pubsub expects):
  garbage   a length prefix followed by random bytes that are not a protobuf RPC (stock py-libp2p 0.8.1 raised
            protobuf DecodeError out of the read loop)
  oversize  a length prefix of 2 MB followed by 2 MB (above the 1 MB inbound cap)
  big       a well-formed 200 KB RPC whose one message has a bogus signature (larger than any honest frame)
Prints one JSON line per frame ({"frame", "written": bool, "error"}) and exits 0. Used by tests/integration/
test_libp2p.py; it is a test tool, not part of the node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--frames", nargs="*", default=["garbage", "oversize", "big"])
    ap.add_argument("--topic", default="sapo/conformance/rollouts/1")
    args = ap.parse_args(argv)

    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.utils.varint import encode_uvarint

    def frame(kind: str) -> bytes:
        if kind == "garbage":
            body = b"\xff\xff\xff\xff" + os.urandom(2000)  # field 31 wire type 7: invalid at the first byte
            return encode_uvarint(len(body)) + body
        if kind == "oversize":
            body = os.urandom(2 * 1024 * 1024)
            return encode_uvarint(len(body)) + body
        if kind == "big":
            rpc = rpc_pb2.RPC()
            msg = rpc.publish.add()
            msg.from_id, msg.data, msg.seqno = b"\x00\x01", os.urandom(200_000), os.urandom(8)
            msg.topicIDs.append(args.topic)
            msg.signature, msg.key = os.urandom(64), os.urandom(36)
            body = rpc.SerializeToString()
            return encode_uvarint(len(body)) + body
        raise ValueError(kind)

    async def run() -> None:
        host = new_host(key_pair=create_new_key_pair(), listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
        info = info_from_p2p_addr(multiaddr.Multiaddr(args.target))
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await host.connect(info)
            for kind in args.frames:
                row = {"frame": kind, "written": False, "error": None}
                try:
                    with trio.fail_after(10):
                        stream = await host.new_stream(info.peer_id, [PROTOCOL_ID_V11])
                        await stream.write(frame(kind))
                        row["written"] = True
                        await trio.sleep(0.5)
                        await stream.close()
                except Exception as e:  # noqa: BLE001 - the victim resetting us is the expected outcome
                    row["error"] = repr(e)[:200]
                print(json.dumps(row), flush=True)

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
