#!/usr/bin/env node
// Interop peer for nwebsocket's tests/interop.rs: a Node `ws` server.
//
// Binds 127.0.0.1 on a free port (or --port N) and prints the port alone on its first
// stdout line. With --deflate it negotiates permessage-deflate (otherwise it declines). It stops by itself after --lifetime seconds. The path table is the same as
// py_server.py's (see its docstring): /echo, /info, /close, /fragmented, /ping, /send,
// /flood, /badutf8, /abort, /closelog; ?id=X logs the connection for /closelog;
// subprotocol: the first offered one in KNOWN, or "not-offered" with ?bogus_protocol=1.
'use strict';

const { WebSocketServer } = require('ws');
const wsVersion = require('ws/package.json').version;

const KNOWN = ['chat.v1', 'chat.v2', 'superchat'];
const TEXT_UNIT = 'Grüße, 世界! 😀 ';
const MAX_SIZE = 4 << 20;

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
}

const closelog = new Map(); // id -> { promise, resolve, done }
function logEntry(id) {
  let e = closelog.get(id);
  if (!e) {
    e = { done: false };
    e.promise = new Promise((resolve) => { e.resolve = resolve; });
    closelog.set(id, e);
  }
  return e;
}

function parse(req) {
  const url = new URL(req.url, 'ws://127.0.0.1');
  const q = {};
  for (const [k, v] of url.searchParams) q[k] = v;
  return { path: url.pathname, rawq: url.search.replace(/^\?/, ''), q };
}

function binaryPattern(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i % 251;
  return b;
}

function chunks(data, size) {
  size = Math.max(1, size);
  const out = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return out.length ? out : [Buffer.alloc(0)];
}

function echo(ws, stats) {
  ws.on('message', (data, isBinary) => {
    stats.messages += 1;
    stats.last = isBinary ? null : data.toString('utf8');
    ws.send(data, { binary: isBinary });
  });
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: arg('--port', 0),
  // --deflate: accept permessage-deflate offers (ws's defaults, which honour the
  // client's no_context_takeover and window requests), compressing every message.
  perMessageDeflate: process.argv.includes('--deflate') ? { threshold: 0 } : false,
  maxPayload: MAX_SIZE,
  handleProtocols(protocols, req) {
    if (parse(req).q.bogus_protocol) return 'not-offered';
    for (const p of protocols) if (KNOWN.includes(p)) return p;
    return false;
  },
});

wss.on('listening', () => {
  const { port } = wss.address();
  process.stdout.write(`${port}\n`);
  process.stderr.write(`ws ${wsVersion} on node ${process.version} listening on 127.0.0.1:${port}\n`);
});

wss.on('error', (err) => {
  process.stderr.write(`server error: ${err.stack || err}\n`);
  process.exit(1);
});

wss.on('connection', (ws, req) => {
  const { path, rawq, q } = parse(req);
  const stats = { messages: 0, last: null };
  ws.on('error', (err) => process.stderr.write(`${req.url}: ${err.message}\n`));
  ws.on('close', (code, reason) => {
    if (q.id === undefined || path === '/closelog') return;
    const e = logEntry(q.id);
    if (e.done) return;
    e.done = true;
    e.resolve({ code, reason: reason.toString('utf8'), messages: stats.messages, last: stats.last });
  });

  switch (path) {
    case '/echo':
      echo(ws, stats);
      break;
    case '/info':
      ws.send(JSON.stringify({
        path,
        query: rawq,
        offered: req.headers['sec-websocket-protocol'] === undefined ? [] : [req.headers['sec-websocket-protocol']],
        subprotocol: ws.protocol || null,
      }));
      echo(ws, stats);
      break;
    case '/close': {
      const before = Number(q.before || 0);
      const pad = 'p'.repeat(Number(q.pad || 0));
      for (let i = 0; i < before; i++) ws.send(`msg ${i}${pad}`);
      if (q.code !== undefined) ws.close(Number(q.code), q.reason || '');
      else ws.close(); // an empty Close frame
      break;
    }
    case '/fragmented': {
      const size = Number(q.size || 7);
      const text = (q.kind || 'text') === 'text';
      const data = text
        ? Buffer.from(TEXT_UNIT.repeat(Number(q.reps || 3)), 'utf8')
        : binaryPattern(Number(q.len || 1000));
      const parts = chunks(data, size);
      parts.forEach((part, i) => {
        // `ws` sends the first frame with the message's opcode and the rest as
        // continuation frames; binary: false keeps Buffer fragments a text message.
        ws.send(part, { binary: !text, fin: i === parts.length - 1 });
        if (i === 0 && q.ping !== undefined) ws.ping(Buffer.from(q.ping, 'utf8'));
      });
      echo(ws, stats);
      break;
    }
    case '/ping': {
      const payload = q.payload || '';
      const timer = setTimeout(() => ws.send('no-pong'), 10000);
      ws.once('pong', (data) => {
        clearTimeout(timer);
        ws.send('pong:' + data.toString('utf8'));
      });
      ws.ping(Buffer.from(payload, 'utf8'));
      echo(ws, stats);
      break;
    }
    case '/send': {
      const size = Number(q.size || 0);
      if ((q.kind || 'binary') === 'text') ws.send('x'.repeat(size));
      else ws.send(binaryPattern(size));
      echo(ws, stats);
      break;
    }
    case '/flood': {
      const count = Number(q.count || 100);
      const body = binaryPattern(Math.max(0, Number(q.size || 16) - 4));
      for (let i = 0; i < count; i++) {
        const head = Buffer.alloc(4);
        head.writeUInt32BE(i);
        ws.send(Buffer.concat([head, body]));
      }
      ws.send('done');
      echo(ws, stats);
      break;
    }
    case '/badutf8':
      ws.send(Buffer.concat([Buffer.from('ok '), Buffer.from([0xff, 0xfe]), Buffer.from(' not utf-8')]), { binary: false });
      echo(ws, stats);
      break;
    case '/abort':
      ws.terminate();
      break;
    case '/closelog': {
      const id = q.id || '';
      const e = logEntry(id);
      const timer = setTimeout(() => {
        ws.send(JSON.stringify({ error: `no connection with id ${id} ended` }));
        ws.close(1000);
      }, 10000);
      e.promise.then((record) => {
        clearTimeout(timer);
        ws.send(JSON.stringify(record));
        ws.close(1000);
      });
      break;
    }
    default:
      ws.close(4404, `unknown path ${path}`);
  }
});

setTimeout(() => {
  process.stderr.write('lifetime over; exiting\n');
  process.exit(0);
}, arg('--lifetime', 1800) * 1000);
