//! `kad_load`: a FIND_NODE load generator against one Kademlia server
//! (see `../PROTOCOL.md`). The `new` mode is driven by the swarm loop in
//! `main.rs` through libp2p-kad's own client; this module holds what both
//! modes share (request pool, statistics), the `reused` mode's workers
//! (libp2p-stream) and the behaviour that keeps a load from dialing anybody
//! but the server.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::identity::Keypair;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, Stream, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{kad, Multiaddr, PeerId};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A request not answered within this time counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in the pool, sent in turn.
pub const POOL_SIZE: usize = 256;
pub const MAX_INFLIGHT: usize = 256;
/// libp2p-kad's default maximum packet size (16 KiB): a longer reply is an error.
const MAX_REPLY: usize = 16 * 1024;

/// Denies every outbound connection to a peer other than `target` while a
/// `kad_load` runs (`target` is `Some`). The server's FIND_NODE replies
/// carry made-up peers; a kad query would dial each of them. Denied here,
/// each of those dials fails at once (`DialError::Denied`, reported to kad
/// synchronously from `Swarm::dial`), so a query ends right after its one
/// request to the server. Put first in the combined behaviour, so that the
/// others are not even asked for addresses.
#[derive(Default)]
pub struct LoadGuard {
    pub target: Option<PeerId>,
}

#[derive(Debug)]
struct OutsideLoad;

impl std::fmt::Display for OutsideLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a kad_load runs: only its server is dialed")
    }
}

impl std::error::Error for OutsideLoad {}

impl NetworkBehaviour for LoadGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        maybe_peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        match self.target {
            Some(target) if maybe_peer != Some(target) => Err(ConnectionDenied::new(OutsideLoad)),
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The keys of the request pool: random Ed25519 PeerIds, or with `seed` the
/// ones whose secret key is `sha256("kadfast-interop-load-<seed>-<i>")`.
pub fn key_pool(seed: Option<u64>) -> Vec<PeerId> {
    (0..POOL_SIZE)
        .map(|i| {
            let kp = match seed {
                Some(s) => {
                    let secret = Sha256::digest(format!("kadfast-interop-load-{s}-{i}").as_bytes());
                    Keypair::ed25519_from_bytes(secret.to_vec()).expect("32-byte secret")
                }
                None => Keypair::generate_ed25519(),
            };
            kp.public().to_peer_id()
        })
        .collect()
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A framed FIND_NODE request for `key`, byte for byte what libp2p-kad
/// sends: the unsigned-varint length, then the protobuf `Message` with
/// field 1 (type) = 4 (FIND_NODE), field 2 (key) and field 10
/// (clusterLevelRaw) = 10, which libp2p-kad sets on every request.
pub fn find_node_frame(key: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(key.len() + 8);
    msg.extend_from_slice(&[0x08, 0x04]);
    msg.push(0x12);
    put_varint(&mut msg, key.len());
    msg.extend_from_slice(key);
    msg.extend_from_slice(&[0x50, 0x0a]);
    let mut frame = Vec::with_capacity(msg.len() + 2);
    put_varint(&mut frame, msg.len());
    frame.extend_from_slice(&msg);
    frame
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The closer peers (field 8, repeated Peer) in a protobuf kad `Message`,
/// by a walk over its top-level fields; None if it does not parse.
pub fn count_closer_peers(msg: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut count = 0;
    while pos < msg.len() {
        let tag = get_varint(msg, &mut pos)?;
        match tag & 7 {
            0 => {
                get_varint(msg, &mut pos)?;
            }
            1 => pos += 8,
            2 => {
                let len = usize::try_from(get_varint(msg, &mut pos)?).ok()?;
                pos = pos.checked_add(len)?;
                if tag >> 3 == 8 {
                    count += 1;
                }
            }
            5 => pos += 4,
            _ => return None,
        }
        if pos > msg.len() {
            return None;
        }
    }
    Some(count)
}

/// What a `kad_load` (or one of its workers) measured.
#[derive(Default)]
pub struct LoadStats {
    latencies_ms: Vec<f64>,
    errors: u64,
    first_error: Option<(Instant, String)>,
    /// When the first reply came and how many closer peers it carried.
    first_reply: Option<(Instant, usize)>,
    first_start: Option<Instant>,
    last_reply: Option<Instant>,
}

impl LoadStats {
    /// A request that started at `t0` was answered now.
    pub fn answered(&mut self, t0: Instant, closer_peers: impl FnOnce() -> usize) -> Instant {
        let t1 = Instant::now();
        self.latencies_ms.push((t1 - t0).as_secs_f64() * 1000.0);
        if self.first_start.is_none_or(|s| t0 < s) {
            self.first_start = Some(t0);
        }
        if self.last_reply.is_none_or(|l| t1 > l) {
            self.last_reply = Some(t1);
        }
        if self.first_reply.is_none() {
            self.first_reply = Some((t1, closer_peers()));
        }
        t1
    }

    pub fn failed(&mut self, error: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some((Instant::now(), error.into()));
        }
    }

    pub fn merge(&mut self, other: LoadStats) {
        self.latencies_ms.extend(other.latencies_ms);
        self.errors += other.errors;
        fn earlier<T>(a: &mut Option<(Instant, T)>, b: Option<(Instant, T)>) {
            if let Some(b) = b {
                if a.as_ref().is_none_or(|a| b.0 < a.0) {
                    *a = Some(b);
                }
            }
        }
        earlier(&mut self.first_error, other.first_error);
        earlier(&mut self.first_reply, other.first_reply);
        if let Some(s) = other.first_start {
            if self.first_start.is_none_or(|f| s < f) {
                self.first_start = Some(s);
            }
        }
        if let Some(l) = other.last_reply {
            if self.last_reply.is_none_or(|f| l > f) {
                self.last_reply = Some(l);
            }
        }
    }

    /// The command's result; Err when nothing was answered.
    pub fn result(mut self) -> Result<Value, String> {
        let n = self.latencies_ms.len();
        if n == 0 {
            let why = self
                .first_error
                .map(|(_, e)| e)
                .unwrap_or_else(|| "no request was sent".into());
            return Err(format!(
                "kad_load: no request answered ({} failed): {why}",
                self.errors
            ));
        }
        self.latencies_ms.sort_by(f64::total_cmp);
        // nearest rank: the smallest value with at least p% of all at or below it
        let rank = |p: f64| {
            let r = ((p / 100.0) * n as f64).ceil() as usize;
            self.latencies_ms[r.clamp(1, n) - 1]
        };
        let elapsed = match (self.first_start, self.last_reply) {
            (Some(s), Some(l)) => (l - s).as_secs_f64(),
            _ => 0.0,
        };
        let mean = self.latencies_ms.iter().sum::<f64>() / n as f64;
        let mut out = json!({
            "requests": n,
            "elapsed": elapsed,
            "p50_ms": rank(50.0),
            "p99_ms": rank(99.0),
            "mean_ms": mean,
            "errors": self.errors,
            "closer_peers": self.first_reply.map(|(_, c)| c),
        });
        if let Some((_, e)) = self.first_error {
            out["error"] = json!(e);
        }
        Ok(out)
    }
}

/// `mode: "new"` state: kad queries in flight, each started at its Instant.
pub struct NewLoad {
    pub end: Instant,
    pub next: usize,
    pub running: VecDeque<(kad::QueryId, Instant)>,
    pub stats: LoadStats,
}

async fn read_varint<R: futures::io::AsyncRead + Unpin>(r: &mut R) -> io::Result<usize> {
    let mut v = 0usize;
    let mut byte = [0u8; 1];
    for shift in (0..63).step_by(7) {
        if r.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed before the reply",
            ));
        }
        v |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "reply length: bad varint",
    ))
}

/// One request on `stream`: write the frame, read one framed reply into `buf`.
async fn exchange(
    stream: &mut BufReader<Stream>,
    frame: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    stream.get_mut().write_all(frame).await?;
    stream.get_mut().flush().await?;
    let len = read_varint(stream).await?;
    if len > MAX_REPLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply of {len} bytes (more than {MAX_REPLY})"),
        ));
    }
    buf.resize(len, 0);
    stream.read_exact(buf).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(e.kind(), "stream closed before the end of the reply")
        } else {
            e
        }
    })
}

/// A `mode: "reused"` worker: one `/ipfs/kad/1.0.0` stream (a new one after
/// a failure), every request on it in turn, until `end`. `deadline` is the
/// command's: no request waits past it.
pub async fn reused_worker(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    frames: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicUsize>,
    end: Instant,
    deadline: Instant,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut stream: Option<BufReader<Stream>> = None;
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < end {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => {
                let limit = (Instant::now() + REQUEST_TIMEOUT).min(deadline);
                let open = control.open_stream(peer, kad::PROTOCOL_NAME);
                match tokio::time::timeout_at(limit.into(), open).await {
                    Ok(Ok(s)) => stream.insert(BufReader::with_capacity(4096, s)),
                    Ok(Err(e @ libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
                        stats.failed(e.to_string());
                        break;
                    }
                    Ok(Err(e)) => {
                        stats.failed(e.to_string());
                        continue;
                    }
                    Err(_) => {
                        stats.failed("failed to open stream: no stream within 10 s");
                        continue;
                    }
                }
            }
        };
        let frame = &frames[next.fetch_add(1, Ordering::Relaxed) % frames.len()];
        let t0 = Instant::now();
        let limit = (t0 + REQUEST_TIMEOUT).min(deadline);
        match tokio::time::timeout_at(limit.into(), exchange(s, frame, &mut buf)).await {
            Ok(Ok(())) => {
                stats.answered(t0, || count_closer_peers(&buf).unwrap_or(0));
            }
            // yamux's "connection is closed": the stream can no longer be
            // written, the remote reset it (or the connection ended)
            Ok(Err(e)) if e.kind() == io::ErrorKind::WriteZero => {
                stats.failed(format!(
                    "request failed: stream reset before the request was written ({e})"
                ));
                stream = None;
            }
            Ok(Err(e)) => {
                stats.failed(format!("request failed: {e}"));
                stream = None;
            }
            Err(_) => {
                stats.failed("no reply within 10 s");
                stream = None;
            }
        }
    }
    if let Some(mut s) = stream {
        // half-close, as a finished client does; the server then ends the stream
        let _ = tokio::time::timeout(Duration::from_secs(1), s.get_mut().close()).await;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_walk() {
        let key = PeerId::random().to_bytes();
        let frame = find_node_frame(&key);
        assert_eq!(frame[0] as usize, frame.len() - 1);
        assert_eq!(&frame[1..5], &[0x08, 0x04, 0x12, key.len() as u8]);
        assert_eq!(count_closer_peers(&frame[1..]), Some(0));
        // type 4, then two closer peers (field 8) of 3 bytes each
        let msg = [0x08, 0x04, 0x42, 0x03, 1, 2, 3, 0x42, 0x03, 4, 5, 6];
        assert_eq!(count_closer_peers(&msg), Some(2));
        assert_eq!(count_closer_peers(&msg[..10]), None);
    }

    #[test]
    fn nearest_rank() {
        let mut s = LoadStats::default();
        s.latencies_ms = (1..=100).map(f64::from).collect();
        s.first_reply = Some((Instant::now(), 20));
        let v = s.result().unwrap();
        assert_eq!(v["p50_ms"], 50.0);
        assert_eq!(v["p99_ms"], 99.0);
        assert_eq!(v["requests"], 100);
        assert!(v.get("error").is_none());
    }
}
