#!/usr/bin/env python3
"""Interop peer for nwebsocket's tests/interop.rs: a Python `websockets` server.

Binds 127.0.0.1 on a free port (or --port) and prints the port alone on its first stdout
line. With --deflate it negotiates permessage-deflate (otherwise it declines the offer). It stops by itself after --lifetime seconds. The path (and query) of each connection
chooses what the server does; node_server.js implements the same table for Node's `ws`:

  /echo                 echo every message, text as text and binary as binary
  /info                 send JSON {path, query, offered, subprotocol}, then echo
  /close?code=&reason=&before=N&pad=P
                        send N text messages "msg <i>" (each followed by P bytes of "p"),
                        then close with code and reason
                        (no code: an empty Close frame, which the client sees as 1005)
  /fragmented?kind=text|binary&reps=&len=&size=&ping=PAYLOAD
                        send one message split into frames of `size` bytes (text frames
                        are cut anywhere, even inside a UTF-8 sequence), with a ping
                        between the first two frames when `ping` is given; then echo
  /ping?payload=P       send a ping with payload P, wait for its pong, send "pong:P"
                        (or "no-pong" after 10 s), then echo
  /send?kind=&size=     send one message of `size` bytes, then echo
  /flood?count=&size=   send `count` binary messages of `size` bytes, each starting with
                        its index as 4 big-endian bytes, then the text "done"; then echo
  /badutf8              send a text frame that is not UTF-8, then echo
  /abort                drop the TCP connection without a closing handshake
  /closelog?id=X        wait (up to 10 s) for the connection that had ?id=X to end and send
                        JSON {code, reason, messages, last}: the close code and reason the
                        server received from the client (1005: no code, 1006: no Close
                        frame), how many messages it received and the last one (text), then
                        close with 1000

Any connection whose query has id=X is logged for /closelog. Subprotocols: the server picks
the first offered one that it knows (KNOWN), none if it knows none; with ?bogus_protocol=1
it answers "not-offered", which a correct client must refuse.
"""

import argparse
import asyncio
import json
import logging
import sys
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

KNOWN = ["chat.v1", "chat.v2", "superchat"]
TEXT_UNIT = "Grüße, 世界! 😀 "
MAX_SIZE = 4 << 20

closelog = {}


def log_future(ident):
    fut = closelog.get(ident)
    if fut is None:
        fut = asyncio.get_running_loop().create_future()
        closelog[ident] = fut
    return fut


def query_of(ws):
    parts = urlsplit(ws.request.path)
    return parts.path, parts.query, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}


def select_subprotocol(ws, offered):
    _, _, q = query_of(ws)
    if q.get("bogus_protocol"):
        return "not-offered"
    for p in offered:
        if p in KNOWN:
            return p
    return None


def binary_pattern(n):
    return bytes(i % 251 for i in range(n))


def chunks(data, size):
    size = max(1, size)
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


class Stats:
    def __init__(self):
        self.messages = 0
        self.last = None


async def echo(ws, stats):
    async for msg in ws:
        stats.messages += 1
        stats.last = msg if isinstance(msg, str) else None
        try:
            await ws.send(msg)
        except ConnectionClosed:
            # The client's Close arrived: keep counting what came before it.
            pass


async def behave(ws, path, rawq, q, stats):
    if path == "/echo":
        await echo(ws, stats)
    elif path == "/info":
        await ws.send(json.dumps({
            "path": path,
            "query": rawq,
            "offered": ws.request.headers.get_all("Sec-WebSocket-Protocol"),
            "subprotocol": ws.subprotocol,
        }))
        await echo(ws, stats)
    elif path == "/close":
        pad = "p" * int(q.get("pad", "0"))
        for i in range(int(q.get("before", "0"))):
            await ws.send(f"msg {i}{pad}")
        if "code" in q:
            await ws.close(int(q["code"]), q.get("reason", ""))
        else:
            await ws.close(None)  # an empty Close frame
    elif path == "/fragmented":
        size = int(q.get("size", "7"))
        if q.get("kind", "text") == "text":
            data = (TEXT_UNIT * int(q.get("reps", "3"))).encode()
            text = True
        else:
            data = binary_pattern(int(q.get("len", "1000")))
            text = False
        parts = chunks(data, size)
        ping = q.get("ping")

        async def frames():
            for i, part in enumerate(parts):
                yield part
                if i == 0 and ping is not None:
                    await ws.ping(ping.encode())

        await ws.send(frames(), text=text)
        await echo(ws, stats)
    elif path == "/ping":
        payload = q.get("payload", "")
        waiter = await ws.ping(payload.encode())
        try:
            await asyncio.wait_for(waiter, 10)
            await ws.send("pong:" + payload)
        except asyncio.TimeoutError:
            await ws.send("no-pong")
        await echo(ws, stats)
    elif path == "/send":
        size = int(q.get("size", "0"))
        if q.get("kind", "binary") == "text":
            await ws.send("x" * size)
        else:
            await ws.send(binary_pattern(size))
        await echo(ws, stats)
    elif path == "/flood":
        count, size = int(q.get("count", "100")), int(q.get("size", "16"))
        body = binary_pattern(max(0, size - 4))
        for i in range(count):
            await ws.send(i.to_bytes(4, "big") + body)
        await ws.send("done")
        await echo(ws, stats)
    elif path == "/badutf8":
        await ws.send(b"ok \xff\xfe not utf-8", text=True)
        await echo(ws, stats)
    elif path == "/abort":
        ws.transport.abort()
    elif path == "/closelog":
        try:
            record = await asyncio.wait_for(asyncio.shield(log_future(q.get("id", ""))), 10)
        except asyncio.TimeoutError:
            record = {"error": "no connection with id " + q.get("id", "") + " ended"}
        await ws.send(json.dumps(record))
        await ws.close(1000)
    else:
        await ws.close(4404, "unknown path " + path)


async def handler(ws):
    path, rawq, q = query_of(ws)
    stats = Stats()
    try:
        await behave(ws, path, rawq, q, stats)
    except ConnectionClosed:
        pass
    finally:
        await ws.wait_closed()
        ident = q.get("id")
        if ident is not None and path != "/closelog":
            fut = log_future(ident)
            if not fut.done():
                fut.set_result({
                    "code": ws.close_code,
                    "reason": ws.close_reason,
                    "messages": stats.messages,
                    "last": stats.last,
                })


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=1800, help="seconds before exiting")
    parser.add_argument("--debug", action="store_true", help="log every frame to stderr")
    parser.add_argument("--deflate", action="store_true",
                        help="negotiate permessage-deflate (websockets' default settings)")
    args = parser.parse_args()
    if args.debug:
        logging.basicConfig(format="%(asctime)s %(message)s", level=logging.DEBUG)
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        select_subprotocol=select_subprotocol,
        compression="deflate" if args.deflate else None,
        max_size=MAX_SIZE,
        ping_interval=None,
        # With the default (16 frames) websockets stops reading the socket while the
        # handler lags, and then only notices the client's end of TCP after close_timeout:
        # a 5 s stall, not a failure, in client_close_flushes_sent_messages_first.
        max_queue=1024,
        close_timeout=5,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        print(f"websockets {websockets.__version__} listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        try:
            await asyncio.wait_for(asyncio.Event().wait(), args.lifetime)
        except asyncio.TimeoutError:
            print("lifetime over; exiting", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
