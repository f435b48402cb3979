//! `tokio-tungstenite` on a current-thread runtime (the runtime runs on the calling
//! thread), default configuration, `TCP_NODELAY` on. Bursts of sends use `feed` per
//! message and one `flush`.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{burn, sys, Idle, Res, RssOut, RTT_PAYLOAD, WAIT};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn block_on<T>(f: impl Future<Output = Res<T>>) -> Res<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), f).await? })
}

async fn connect(url: &str) -> Res<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(ws)
}

async fn next_data(ws: &mut Ws) -> Res<Message> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended".into()),
        }
    }
}

async fn close(ws: &mut Ws) -> Res<()> {
    ws.close(None).await?;
    while let Some(m) = tokio::time::timeout(WAIT, ws.next()).await? {
        m?;
    }
    Ok(())
}

pub fn rtt(url: &str, n: usize) -> Res<(Duration, Vec<u64>)> {
    block_on(async {
        let mut ws = connect(url).await?;
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            ws.send(Message::text(RTT_PAYLOAD)).await?;
            black_box(next_data(&mut ws).await?.len());
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let wall = t0.elapsed();
        close(&mut ws).await?;
        Ok((wall, lat))
    })
}

pub fn stream(url: &str, n: usize) -> Res<(Duration, u64)> {
    block_on(async {
        let mut ws = connect(url).await?;
        let t0 = Instant::now();
        ws.send(Message::text("go")).await?;
        let mut bytes = 0u64;
        for _ in 0..n {
            bytes += next_data(&mut ws).await?.len() as u64;
        }
        let wall = t0.elapsed();
        close(&mut ws).await?;
        Ok((wall, bytes))
    })
}

pub fn send(url: &str, n: usize, payload: &[u8]) -> Res<Duration> {
    block_on(async {
        let mut ws = connect(url).await?;
        let t0 = Instant::now();
        for _ in 0..n {
            ws.feed(Message::Binary(Bytes::copy_from_slice(payload)))
                .await?;
        }
        ws.flush().await?;
        next_data(&mut ws).await?;
        let wall = t0.elapsed();
        close(&mut ws).await?;
        Ok(wall)
    })
}

pub fn idle(url: &str, d: Duration) -> Res<Idle> {
    block_on(async {
        let mut ws = connect(url).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = sys::tasks();
        if tokio::time::timeout(d, ws.next()).await.is_ok() {
            return Err("the idle connection received something".into());
        }
        let after = sys::tasks();
        // The runtime runs on this thread: it is the connection's thread, count it.
        let (cpu_ns, ctx, threads) = sys::task_delta(&before, &after, None);
        close(&mut ws).await?;
        Ok(Idle {
            cpu_ns,
            ctx,
            threads,
        })
    })
}

/// The runtime's one thread computes in 1 ms chunks and yields between them, so that the
/// reader task (which answers pings) gets to run.
pub fn busy(url: &str, d: Duration) -> Res<Duration> {
    block_on(async {
        let ws = connect(url).await?;
        let (mut sink, mut stream) = ws.split();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                if m.is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let end = t0 + d;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            black_box(burn((now + Duration::from_millis(1)).min(end)));
            tokio::task::yield_now().await;
        }
        let wall = t0.elapsed();
        sink.close().await?;
        tokio::time::timeout(WAIT, reader).await??;
        Ok(wall)
    })
}

/// Not measured: corun compares this crate with raw tungstenite on a thread of its own.
pub fn corun(_url: &str, _threads: usize, _d: Duration) -> Res<crate::corun::CorunOut> {
    Err("corun is not measured for tokio-tungstenite".into())
}

pub fn rss(url: &str, n: usize) -> Res<RssOut> {
    block_on(async {
        {
            let mut ws = connect(url).await?;
            ws.send(Message::text(RTT_PAYLOAD)).await?;
            next_data(&mut ws).await?;
            close(&mut ws).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let kib0 = sys::rss_kib();
        sys::dump_smaps("0-before");
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(connect(url).await?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kib_idle = sys::rss_kib();
        sys::dump_smaps("1-idle");
        for ws in &mut conns {
            ws.send(Message::text(RTT_PAYLOAD)).await?;
        }
        for ws in &mut conns {
            next_data(ws).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kib_after = sys::rss_kib();
        sys::dump_smaps("2-after");
        for ws in &mut conns {
            close(ws).await?;
        }
        Ok(RssOut {
            kib0,
            kib_idle,
            kib_after,
        })
    })
}
