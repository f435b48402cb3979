#!/usr/bin/env python3
"""Python `websockets` as the anchor of the permessage-deflate bench (issue 16).

Run by `cargo run --release -p nwebsocket-compare --bin deflate`, which starts its server
(`deflate --serve`) and calls this script once per run:

    deflate_anchor.py URL KIND N --compression deflate|none --api sync|asyncio

KIND is what the server at URL does (the same protocol as the Rust client's in deflate.rs):

- stream: the server sends "ready", waits for "go", sends N messages, then the text
  "done WIRE" (the bytes it wrote for the N messages, frame headers included). The clock
  and the CPU count run from "go" to "done".
- send: the client sends N binary messages of 64 bytes; the server answers "done WIRE"
  after the Nth (the bytes of the N frames it read, headers and masks included).
- rtt: N round trips of a 32-byte text message, one in flight; after the Nth echo the
  server sends "done RX TX" (bytes read and written for the N round trips).

Prints one JSON line: rate (messages or round trips per second), cpu_us (CPU time of this
whole process per message or round trip, user + system, every thread: getrusage
RUSAGE_SELF, as the Rust side measures), wire (bytes on the wire per message or round
trip), ext (the negotiated extensions), version (websockets').

Default settings but `compression` (websockets' default is "deflate": it offers
`permessage-deflate; client_max_window_bits`, compresses every outgoing data message,
memLevel 5) and, for the asyncio client, nothing else either.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

import websockets
from websockets.sync.client import connect as sync_connect
from websockets.asyncio.client import connect as async_connect

RTT_PAYLOAD = "0123456789abcdef0123456789abcdef"
SMALL = b"\x5a" * 64


def cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def done_fields(msg):
    if not (isinstance(msg, str) and msg.startswith("done ")):
        raise SystemExit(f"expected 'done …', got {msg!r:.80}")
    return [int(x) for x in msg[5:].split()]


def result(n, secs, cpu, wire, ext):
    return {
        "rate": n / secs,
        "cpu_us": cpu * 1e6 / n,
        "wire": wire / n,
        "ext": ext,
        "version": websockets.__version__,
    }


def ext_of(ws):
    return ", ".join(type(e).__name__ for e in ws.protocol.extensions) or "none"


# ----------------------------------------------------------------------------- sync API

def sync_run(url, kind, n, compression):
    with sync_connect(url, compression=compression) as ws:
        if kind == "stream":
            msg = ws.recv()
            if msg != "ready":
                raise SystemExit(f"expected 'ready', got {msg!r:.80}")
            c0, t0 = cpu_s(), time.perf_counter()
            ws.send("go")
            got = 0
            while True:
                msg = ws.recv()
                if isinstance(msg, str) and msg.startswith("done "):
                    break
                got += 1
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            if got != n:
                raise SystemExit(f"received {got} messages, expected {n}")
            wire = done_fields(msg)[0]
        elif kind == "send":
            c0, t0 = cpu_s(), time.perf_counter()
            for _ in range(n):
                ws.send(SMALL)
            msg = ws.recv()
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            wire = done_fields(msg)[0]
        elif kind == "rtt":
            c0, t0 = cpu_s(), time.perf_counter()
            for _ in range(n):
                ws.send(RTT_PAYLOAD)
                if ws.recv() != RTT_PAYLOAD:
                    raise SystemExit("wrong echo")
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            rx, tx = done_fields(ws.recv())
            wire = rx + tx
        else:
            raise SystemExit(f"unknown kind {kind}")
        return result(n, secs, cpu, wire, ext_of(ws))


# -------------------------------------------------------------------------- asyncio API

async def async_run(url, kind, n, compression):
    async with async_connect(url, compression=compression) as ws:
        if kind == "stream":
            msg = await ws.recv()
            if msg != "ready":
                raise SystemExit(f"expected 'ready', got {msg!r:.80}")
            c0, t0 = cpu_s(), time.perf_counter()
            await ws.send("go")
            got = 0
            while True:
                msg = await ws.recv()
                if isinstance(msg, str) and msg.startswith("done "):
                    break
                got += 1
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            if got != n:
                raise SystemExit(f"received {got} messages, expected {n}")
            wire = done_fields(msg)[0]
        elif kind == "send":
            c0, t0 = cpu_s(), time.perf_counter()
            for _ in range(n):
                await ws.send(SMALL)
            msg = await ws.recv()
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            wire = done_fields(msg)[0]
        elif kind == "rtt":
            c0, t0 = cpu_s(), time.perf_counter()
            for _ in range(n):
                await ws.send(RTT_PAYLOAD)
                if await ws.recv() != RTT_PAYLOAD:
                    raise SystemExit("wrong echo")
            secs, cpu = time.perf_counter() - t0, cpu_s() - c0
            rx, tx = done_fields(await ws.recv())
            wire = rx + tx
        else:
            raise SystemExit(f"unknown kind {kind}")
        return result(n, secs, cpu, wire, ext_of(ws))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("kind", choices=["stream", "send", "rtt"])
    p.add_argument("n", type=int)
    p.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    p.add_argument("--api", choices=["sync", "asyncio"], default="sync")
    a = p.parse_args()
    compression = None if a.compression == "none" else "deflate"
    if a.api == "sync":
        out = sync_run(a.url, a.kind, a.n, compression)
    else:
        out = asyncio.run(async_run(a.url, a.kind, a.n, compression))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
