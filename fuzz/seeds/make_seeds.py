#!/usr/bin/env python3
"""Writes the starting seeds of both fuzz targets into fuzz/corpus/<target>/ (named
seed-*). Run once before fuzzing from nothing; `cargo fuzz cmin` then keeps what adds
coverage. Server frames are unmasked."""
import base64, os, random, struct, sys, zlib

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

# after_deflate_handshake: the first byte chooses the server's permessage-deflate answer
# (bit 0 server_no_context_takeover, bit 1 client_no_context_takeover, bits 2-4 and 5-7
# server_/client_max_window_bits as 8 + k, 0 for not sent); frames with RSV1 (rsv=4).
def choice(snct=False, cnct=False, sbits=None, cbits=None):
    k = lambda b: 0 if b is None else b - 8
    return bytes([int(snct) | int(cnct) << 1 | k(sbits) << 2 | k(cbits) << 5])

class Deflater:
    """The server's compressor: one raw deflate context, kept across messages unless reset."""
    def __init__(self, bits=15, reset=False):
        self.bits, self.reset, self.c = bits, reset, None
    def __call__(self, data):
        if self.c is None:
            self.c = zlib.compressobj(9, zlib.DEFLATED, -self.bits)
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        if self.reset:
            self.c = None
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

ztext = lambda z, s, **k: frame(1, z(s), rsv=4, **k)
zbinary = lambda z, s, **k: frame(2, z(s), rsv=4, **k)
rng = random.Random(7692)
noise = lambda n: bytes(rng.getrandbits(8) for _ in range(n))
letters = lambda n: base64.b64encode(noise(n * 3 // 4 + 3))[:n]

z = Deflater()
frag = Deflater().__call__(b"Hello, a fragmented and compressed world! " * 3)
big_text = letters(23000)                       # ~17 KiB compressed: the large-frame path
big_bin = noise(18000)                          # ~18 KiB compressed
over = noise(16600) + bytes(10000)              # >= 16 KiB compressed, 26.6 KiB inflated
far = noise(1000)
deflate = {
    "hello-rfc7692": choice() + bytes.fromhex("c107f248cdc9c90700") + close(1000),
    "hello-rfc7692-eof": choice() + bytes.fromhex("c107f248cdc9c90700"),
    "hello-twice-takeover": choice(sbits=15) + bytes.fromhex("c107f248cdc9c90700") + bytes.fromhex("c105f200110000") + close(1000),
    "hello-stored-block": choice() + bytes.fromhex("c10b000500faff48656c6c6f00") + close(1000),
    "hello-bfinal": choice() + bytes.fromhex("c108f348cdc9c9070000") + ztext(Deflater(), b"after a final block") + close(1000),
    "hello-bfinal-no-pad": choice() + bytes.fromhex("c107f348cdc9c90700") + frame(1, b"plain") + close(1000),
    "empty-compressed": choice() + frame(1, b"\x00", rsv=4) + frame(2, b"", rsv=4) + close(1000),
    "fragmented": choice(snct=True) + frame(1, frag[:5], fin=False, rsv=4) + ping(b"p") + cont(frag[5:20], fin=False) + cont(frag[20:]) + close(1001, b"bye"),
    "fragmented-rsv1-continuation": choice() + frame(1, frag[:5], fin=False, rsv=4) + frame(0, frag[5:], rsv=4),
    "rsv1-ping": choice() + frame(9, b"x", rsv=4),
    "rsv1-close": choice() + frame(8, b"\x03\xe8", rsv=4),
    "rsv23": choice() + frame(1, b"x", rsv=6),
    "corrupt": choice() + frame(2, b"\xff\xff\xff\xff", rsv=4) + close(1000),
    "corrupt-after-hello": choice() + ztext(z, b"fine") + frame(1, b"\x07\xff\x00", rsv=4),
    "bad-utf8-compressed": choice() + ztext(Deflater(), b"\xce\xba\xe1\xbd\xb9\xcf\x83\xff\xbc") + close(1000),
    "utf8-split-compressed": choice() + frame(1, Deflater()(b"\xe2\x82"), fin=False, rsv=4) + cont(b"") + close(1000),
    "bomb": choice() + zbinary(Deflater(), bytes(1 << 20)) + close(1000),
    "bomb-text": choice(sbits=9) + ztext(Deflater(9), b"a" * (1 << 20)) + close(1000),
    "bomb-fragmented": choice() + (lambda b: frame(2, b[:300], fin=False, rsv=4) + cont(b[300:]))(Deflater()(bytes(200000))) + close(1000),
    "at-limit": choice() + zbinary(Deflater(), bytes(24 << 10)) + ztext(Deflater(), b"x" * (24 << 10)) + close(1000),
    "over-limit-by-one": choice() + zbinary(Deflater(), bytes((24 << 10) + 1)) + close(1000),
    "large-text-frame": choice(snct=True) + ztext(Deflater(), big_text) + close(1000, b"large"),
    "large-binary-frame": choice(sbits=12) + zbinary(Deflater(12), big_bin) + ping(b"after") + close(1000),
    "large-binary-frame-eof": choice() + zbinary(Deflater(), big_bin)[:12000],
    "large-frame-over-limit": choice() + zbinary(Deflater(), over) + close(1000),
    "large-text-bad-utf8-then-over-limit": choice() + ztext(Deflater(), b"\xff" + letters(16600) + bytes(10000)) + close(1000),
    "large-uncompressed": choice() + frame(2, noise(17000)) + close(1000),
    "large-fragmented": choice() + (lambda b: frame(2, b[:17000], fin=False, rsv=4) + cont(b[17000:]))(Deflater()(noise(20000))) + close(1000),
    "takeover-window-10": choice(sbits=10) + (lambda z: ztext(z, b"abcdefgh" * 40) + ztext(z, b"abcdefgh" * 60))(Deflater(10)) + close(1000),
    "no-takeover": choice(snct=True, cnct=True) + (lambda z: ztext(z, b"again " * 50) + ztext(z, b"again " * 50))(Deflater(reset=True)) + close(1000),
    "past-the-window": choice(sbits=9) + zbinary(Deflater(15), far + far) + close(1000),
    "past-the-window-across-messages": choice(sbits=9) + (lambda z: zbinary(z, far) + zbinary(z, far))(Deflater(15)) + close(1000),
    "client-window-9": choice(cnct=False, cbits=9) + ztext(Deflater(), b"hi") + close(1000),
    "client-window-12-no-takeover": choice(cnct=True, cbits=12, sbits=11) + ztext(Deflater(11), b"hi") + close(1000),
    "mixed": choice() + text(b"plain") + ztext(z, b"compressed " * 20) + pong(b"pg") + binary(b"\x00\x01") + zbinary(z, bytes(range(256))) + close(3000, b"done"),
    "masked-compressed": choice() + frame(1, Deflater()(b"masked"), rsv=4, mask=b"\x01\x02\x03\x04"),
    "reserved-op-rsv1": choice() + frame(3, Deflater()(b"x"), rsv=4) + close(1000),
    "large-reserved-op": choice() + frame(3, noise(17000)) + close(1000),
    "large-reserved-op-rsv1": choice() + frame(3, Deflater()(noise(17000)), rsv=4) + close(1000),
}

for name, seeds in (("after_handshake", after), ("handshake_response", hand), ("after_deflate_handshake", deflate)):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, "seed-" + k), "wb") as f:
            f.write(v)
    print(f"{name}: {len(seeds)} seeds in {d}", file=sys.stderr)
