#!/usr/bin/env python3
"""Writes the starting seeds of both fuzz targets into fuzz/corpus/<target>/ (named
seed-*). Run once before fuzzing from nothing; `cargo fuzz cmin` then keeps what adds
coverage. Server frames are unmasked."""
import os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "corpus")

def frame(op, payload=b"", fin=True, rsv=0, mask=None, length=None):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload) if length is None else length
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is not None:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        head += mask
    return head + payload

def close(code=None, reason=b""):
    return frame(8, b"" if code is None else struct.pack(">H", code) + reason)

text = lambda s, **k: frame(1, s, **k)
binary = lambda s, **k: frame(2, s, **k)
cont = lambda s, **k: frame(0, s, **k)
ping = lambda s=b"": frame(9, s)
pong = lambda s=b"": frame(10, s)

after = {
    "empty": b"",
    "text-close": text(b"hello") + close(1000, b"bye"),
    "binary-close-nocode": binary(bytes(range(256))) + close(),
    "fragmented": text(b"hel", fin=False) + ping(b"p") + cont(b"lo", fin=False) + cont(b"!") + close(1001),
    "fragmented-binary": binary(b"ab", fin=False) + cont(b"cd") + close(4000, b"app"),
    "ping-pong": ping(b"123") + pong(b"456") + close(1000),
    "text-eof": text(b"no close follows"),
    "utf8-bad": text(b"\xff\xfe") + close(1000),
    "utf8-split": text(b"\xe2\x82", fin=False) + cont(b"\xac") + close(1000),
    "utf8-split-bad": text(b"\xe2\x82", fin=False) + cont(b"\x41") + close(1000),
    "close-reserved-1006": close(1006),
    "close-bad-999": close(999),
    "close-1byte": frame(8, b"\x03"),
    "close-bad-reason": close(1000, b"\xff"),
    "after-close": close(1000) + text(b"late"),
    "rsv": frame(1, b"x", rsv=4),
    "masked": text(b"masked", mask=b"\x01\x02\x03\x04"),
    "reserved-op": frame(3, b"x"),
    "reserved-ctl": frame(11, b"x"),
    "cont-first": cont(b"x"),
    "expected-fragment": text(b"a", fin=False) + text(b"b"),
    "ctl-fragmented": frame(9, b"x", fin=False),
    "ctl-too-big": frame(9, b"x" * 126),
    "frame-too-big": binary(b"", length=1 << 40),
    "frame-at-limit": binary(b"z" * 2048) + close(1000),
    "frame-over-limit": binary(b"z" * 2049),
    "message-over-limit": b"".join([binary(b"y" * 2000, fin=False), cont(b"y" * 2000, fin=False), cont(b"y" * 200)]) + close(1000),
    "len16": text(b"m" * 300) + close(1000),
    "truncated-header": b"\x81",
    "truncated-payload": text(b"", length=10) + b"abc",
    "many-empty": text(b"") * 300 + close(1000),
    "many-pings": ping(b"") * 100 + close(1000),
    "close-then-eof-pings": close(3000, b"r" * 123),
}

accept_ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: @ACCEPT@\r\n"
hand = {
    "ok-chat": accept_ok + b"Sec-WebSocket-Protocol: chat\r\n\r\n",
    "ok-chat-frames": accept_ok + b"Sec-WebSocket-Protocol: chat\r\n\r\n" + text(b"hi") + ping(b"x") + close(1000, b"bye"),
    "ok-superchat-eof": accept_ok + b"Sec-WebSocket-Protocol: superchat\r\n\r\n" + binary(b"\x00\x01"),
    "ok-no-protocol": accept_ok + b"\r\n",
    "ok-unoffered-protocol": accept_ok + b"Sec-WebSocket-Protocol: other\r\n\r\n",
    "ok-extension": accept_ok + b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    "bad-accept": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
    "no-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: @ACCEPT@\r\n\r\n",
    "http10": b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: @ACCEPT@\r\n\r\n",
    "404-body": b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
    "500-chunked": b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "302-location": b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:1/elsewhere\r\n\r\n",
    "301-relative": b"HTTP/1.1 301 Moved\r\nLocation: /other\r\n\r\n",
    "200": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "garbage": b"\x00\x01\x02garbage\r\n\r\n",
    "truncated": b"HTTP/1.1 101 Switch",
    "empty": b"",
    "lf-only": b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Accept: @ACCEPT@\nSec-WebSocket-Protocol: chat\n\n",
    "many-headers": b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    "huge-status": b"HTTP/1.1 999 " + b"x" * 3000 + b"\r\n\r\n",
}

for name, seeds in (("after_handshake", after), ("handshake_response", hand)):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, "seed-" + k), "wb") as f:
            f.write(v)
    print(f"{name}: {len(seeds)} seeds in {d}", file=sys.stderr)
