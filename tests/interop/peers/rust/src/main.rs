//! rust-libp2p interop peer for kadfast.
//!
//! Speaks the JSON-lines control protocol described in `../PROTOCOL.md`:
//! requests on stdin, replies and events on stdout, logs on stderr.

mod load;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{
    self, store::MemoryStore, Mode, QueryId, QueryResult, Quorum, Record, RecordKey,
    RoutingUpdate, K_VALUE,
};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use load::{LoadGuard, LoadStats, NewLoad};

const IMPL: &str = "rust";
const JSON_PROTOCOL: &str = "/kadfast/json/1.0.0";
const AGENT: &str = concat!("kadfast-interop-rust/", env!("CARGO_PKG_VERSION"));
/// After a dial connected, how long to wait for the peer's identify before replying anyway.
const IDENTIFY_GRACE: Duration = Duration::from_secs(3);

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First: while a `kad_load` runs, it denies dials before the others see them.
    guard: LoadGuard,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rr: request_response::json::Behaviour<Value, Value>,
    /// `kad_load` `mode: "reused"` opens its streams through it.
    stream: libp2p_stream::Behaviour,
}

/// What a pending Kademlia query will answer once it progresses.
enum QueryKind {
    Bootstrap,
    Put,
    Get,
    Provide,
    Providers { count: usize, found: Vec<PeerId> },
    /// `dialed`: addresses at which we connected to the target while the
    /// query ran (see `on_event`).
    FindPeer { target: PeerId, dialed: Vec<Multiaddr> },
    Closest,
    /// `ref_announce`: the reference listener's `put_record` (Quorum::One).
    RefAnnounce,
    /// `ref_discover`: `get_record` of the namespace, values decoded as PeerIds.
    RefDiscover { found: Vec<PeerId> },
}

struct PendingQuery {
    id: Value,
    deadline: Instant,
    kind: QueryKind,
}

struct PendingDial {
    id: Value,
    deadline: Instant,
    peer: PeerId,
    conn: Option<ConnectionId>,
    connected_at: Option<Instant>,
}

/// A `ping` or `identify` command waiting on a peer.
struct PendingPeer {
    id: Value,
    deadline: Instant,
    peer: PeerId,
}

struct PendingRequest {
    id: Value,
    deadline: Instant,
}

#[derive(Clone, Copy, PartialEq)]
enum LoadMode {
    New,
    Reused,
}

enum LoadPhase {
    /// Dialing the server (`conn`), then waiting (up to IDENTIFY_GRACE) for its identify.
    Connecting {
        conn: Option<ConnectionId>,
        connected_at: Option<Instant>,
    },
    /// `mode: "new"`: kad queries driven from the swarm loop.
    New(NewLoad),
    /// `mode: "reused"`: worker tasks; their merged statistics arrive on `load_done`.
    Reused,
}

/// The one `kad_load` that may run at a time.
struct KadLoad {
    id: Value,
    deadline: Instant,
    target: PeerId,
    mode: LoadMode,
    inflight: usize,
    duration: Duration,
    keys: Vec<PeerId>,
    phase: LoadPhase,
}

struct Peer {
    swarm: Swarm<Behaviour>,
    local: PeerId,
    queries: HashMap<QueryId, PendingQuery>,
    dials: Vec<PendingDial>,
    pings: Vec<PendingPeer>,
    idents: Vec<PendingPeer>,
    requests: HashMap<OutboundRequestId, PendingRequest>,
    identified: HashMap<PeerId, identify::Info>,
    /// Bootstrap queries of ours that are finished at every step (see `kad_fill`).
    quiet: HashSet<QueryId>,
    load: Option<KadLoad>,
    /// The `reused` workers' merged statistics come back on it.
    load_done: mpsc::UnboundedSender<LoadStats>,
    stream_control: libp2p_stream::Control,
    debug: bool,
}

fn emit(line: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn reply_ok(id: &Value, result: Value) {
    emit(&json!({"id": id, "ok": true, "result": result}));
}

fn reply_err(id: &Value, error: impl std::fmt::Display) {
    emit(&json!({"id": id, "ok": false, "error": error.to_string()}));
}

fn fatal(error: impl std::fmt::Display) -> ! {
    emit(&json!({"event": "fatal", "error": error.to_string()}));
    std::process::exit(1);
}

/// Multiaddr text without a trailing `/p2p/<id>`.
fn strip_p2p(addr: &Multiaddr) -> String {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a.to_string()
}

/// Provider keys are the sha2-256 multihash of the UTF-8 text.
fn provider_key(text: &str) -> RecordKey {
    let mut bytes = vec![0x12, 0x20];
    bytes.extend_from_slice(&Sha256::digest(text.as_bytes()));
    RecordKey::from(bytes)
}

/// The made-up address of the `i`-th `kad_fill` peer: a loopback address on
/// port 1, where nothing listens (a dial is refused at once).
fn fill_addr(i: usize) -> Multiaddr {
    format!(
        "/ip4/127.{}.{}.{}/tcp/1",
        1 + (i >> 16) % 254,
        (i >> 8) & 255,
        i & 255
    )
    .parse()
    .expect("valid multiaddr")
}

/// The identity of the `i`-th `kad_fill` peer: random, or derived from `seed`.
fn fill_keypair(seed: Option<u64>, i: usize) -> Keypair {
    match seed {
        Some(s) => {
            let secret = Sha256::digest(format!("kadfast-interop-fill-{s}-{i}").as_bytes());
            Keypair::ed25519_from_bytes(secret.to_vec()).expect("32-byte secret")
        }
        None => Keypair::generate_ed25519(),
    }
}

fn arg_str<'a>(req: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing argument: {name}"))
}

fn arg_peer(req: &Map<String, Value>, name: &str) -> Result<PeerId, String> {
    let s = arg_str(req, name)?;
    s.parse::<PeerId>()
        .map_err(|e| format!("bad peer id {s:?}: {e}"))
}

fn identify_json(info: &identify::Info) -> Value {
    json!({
        "protocols": info.protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "listen_addrs": info.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "observed_addr": info.observed_addr.to_string(),
    })
}

impl Peer {
    fn log(&self, msg: impl std::fmt::Display) {
        if self.debug {
            eprintln!("[rust-peer] {msg}");
        }
    }

    fn routing_table(&mut self) -> Vec<String> {
        let mut peers = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                peers.push(entry.node.key.preimage().to_string());
            }
        }
        peers
    }

    fn routing_addrs(&mut self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                if entry.node.key.preimage() == peer {
                    addrs.extend(entry.node.value.iter().cloned());
                }
            }
        }
        addrs
    }

    fn add_query(&mut self, qid: QueryId, id: Value, deadline: Instant, kind: QueryKind) {
        self.queries
            .insert(qid, PendingQuery { id, deadline, kind });
    }

    /// Make sure we are (or are becoming) connected to `peer`; Err if a dial cannot even start.
    fn ensure_connected(&mut self, peer: PeerId) -> Result<(), String> {
        if self.swarm.is_connected(&peer) {
            return Ok(());
        }
        match self.swarm.dial(DialOpts::peer_id(peer).allocate_new_port().build()) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => Ok(()),
            Err(e) => Err(format!("dial {peer}: {e}")),
        }
    }

    fn handle_line(&mut self, line: &str) -> bool {
        let line = line.trim();
        if line.is_empty() {
            return true;
        }
        let req: Map<String, Value> = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                reply_err(&Value::Null, "request is not a JSON object");
                return true;
            }
            Err(e) => {
                reply_err(&Value::Null, format!("bad JSON: {e}"));
                return true;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let cmd = req
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let timeout = req
            .get("timeout")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t > 0.0)
            .unwrap_or(30.0);
        // Answer a little before the caller's own deadline.
        let margin = (timeout * 0.1).min(0.25);
        let deadline = Instant::now() + Duration::from_secs_f64(timeout - margin);
        if cmd == "stop" {
            reply_ok(&id, json!({}));
            return false;
        }
        if let Err(e) = self.dispatch(&cmd, &req, id.clone(), deadline) {
            reply_err(&id, e);
        }
        true
    }

    fn dispatch(
        &mut self,
        cmd: &str,
        req: &Map<String, Value>,
        id: Value,
        deadline: Instant,
    ) -> Result<(), String> {
        match cmd {
            "dial" => {
                let addr: Multiaddr = arg_str(req, "addr")?
                    .parse()
                    .map_err(|e| format!("bad multiaddr: {e}"))?;
                let peer = match addr.iter().last() {
                    Some(Protocol::P2p(p)) => p,
                    _ => return Err("addr must end in /p2p/<peer id>".into()),
                };
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                // a fresh source port: with port reuse, a dial racing one that kad
                // started itself fails with EADDRINUSE
                let opts = DialOpts::peer_id(peer).addresses(vec![addr]).allocate_new_port().build();
                let conn = opts.connection_id();
                let mut pending = PendingDial {
                    id,
                    deadline,
                    peer,
                    conn: Some(conn),
                    connected_at: None,
                };
                match self.swarm.dial(opts) {
                    Ok(()) => {}
                    Err(DialError::DialPeerConditionFalse(_)) => {
                        pending.conn = None;
                        pending.connected_at = Some(Instant::now());
                    }
                    Err(e) => return Err(format!("dial: {e}")),
                }
                self.dials.push(pending);
                self.check_dials();
            }
            "bootstrap" => {
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .bootstrap()
                    .map_err(|_| "bootstrap: no known peers".to_string())?;
                self.add_query(qid, id, deadline, QueryKind::Bootstrap);
            }
            "put" => {
                let key = arg_str(req, "key")?;
                let value = arg_str(req, "value")?;
                let quorum = match req.get("quorum").and_then(Value::as_u64).unwrap_or(1) {
                    0 | 1 => Quorum::One,
                    n => Quorum::N(NonZeroUsize::new(n as usize).unwrap()),
                };
                let record = Record::new(key.as_bytes().to_vec(), value.as_bytes().to_vec());
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, quorum)
                    .map_err(|e| format!("put: local store: {e}"))?;
                self.add_query(qid, id, deadline, QueryKind::Put);
            }
            "get" => {
                let key = RecordKey::from(arg_str(req, "key")?.as_bytes().to_vec());
                let qid = self.swarm.behaviour_mut().kad.get_record(key);
                self.add_query(qid, id, deadline, QueryKind::Get);
            }
            "provide" => {
                let key = provider_key(arg_str(req, "key")?);
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(key)
                    .map_err(|e| format!("provide: local store: {e}"))?;
                self.add_query(qid, id, deadline, QueryKind::Provide);
            }
            "providers" => {
                let key = provider_key(arg_str(req, "key")?);
                let count = req.get("count").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
                let qid = self.swarm.behaviour_mut().kad.get_providers(key);
                self.add_query(
                    qid,
                    id,
                    deadline,
                    QueryKind::Providers {
                        count,
                        found: Vec::new(),
                    },
                );
            }
            "find_peer" => {
                let target = arg_peer(req, "peer_id")?;
                let qid = self.swarm.behaviour_mut().kad.get_closest_peers(target);
                self.add_query(
                    qid,
                    id,
                    deadline,
                    QueryKind::FindPeer {
                        target,
                        dialed: Vec::new(),
                    },
                );
            }
            "closest" => {
                let qid = if req.contains_key("peer_id") {
                    let p = arg_peer(req, "peer_id")?;
                    self.swarm.behaviour_mut().kad.get_closest_peers(p)
                } else {
                    let key = arg_str(req, "key")?.as_bytes().to_vec();
                    self.swarm.behaviour_mut().kad.get_closest_peers(key)
                };
                self.add_query(qid, id, deadline, QueryKind::Closest);
            }
            "ping" => {
                let peer = arg_peer(req, "peer_id")?;
                self.ensure_connected(peer)?;
                self.pings.push(PendingPeer { id, deadline, peer });
            }
            "identify" => {
                let peer = arg_peer(req, "peer_id")?;
                if let Some(info) = self.identified.get(&peer) {
                    reply_ok(&id, identify_json(info));
                    return Ok(());
                }
                self.ensure_connected(peer)?;
                self.idents.push(PendingPeer { id, deadline, peer });
            }
            "request" => {
                let peer = arg_peer(req, "peer_id")?;
                let body = req.get("body").cloned().unwrap_or(Value::Null);
                let rid = self.swarm.behaviour_mut().rr.send_request(&peer, body);
                self.requests.insert(rid, PendingRequest { id, deadline });
            }
            // The reference program's namespace scheme: one record whose key is the
            // raw namespace bytes and whose value is the announcer's PeerId bytes.
            "ref_announce" => {
                let namespace = arg_str(req, "namespace")?;
                let record = Record::new(
                    RecordKey::new(&namespace.as_bytes()),
                    self.local.to_bytes(),
                );
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, Quorum::One)
                    .map_err(|e| format!("ref_announce: local store: {e}"))?;
                self.add_query(qid, id, deadline, QueryKind::RefAnnounce);
            }
            "ref_discover" => {
                let namespace = arg_str(req, "namespace")?;
                let key = RecordKey::new(&namespace.as_bytes());
                let qid = self.swarm.behaviour_mut().kad.get_record(key);
                self.add_query(
                    qid,
                    id,
                    deadline,
                    QueryKind::RefDiscover { found: Vec::new() },
                );
            }
            "kad_fill" => {
                let count = req
                    .get("count")
                    .and_then(Value::as_u64)
                    .ok_or("missing argument: count")? as usize;
                let seed = req.get("seed").and_then(Value::as_u64);
                let kad = &mut self.swarm.behaviour_mut().kad;
                let mut refused = 0usize;
                for i in 0..count {
                    let peer = fill_keypair(seed, i).public().to_peer_id();
                    // Only into a bucket with room: adding to a full bucket makes the
                    // peer "pending" and dials the bucket's least recently seen entry
                    // (a made-up peer) to see whether it may be replaced.
                    match kad.kbucket(peer) {
                        Some(bucket) if bucket.num_entries() < K_VALUE.get() => {}
                        _ => continue,
                    }
                    if let RoutingUpdate::Failed = kad.add_address(&peer, fill_addr(i)) {
                        refused += 1;
                    }
                }
                self.log(format!("kad_fill: {count} peers, {refused} refused by kad"));
                // The first inserts (table below k entries) scheduled an automatic
                // bootstrap, which would dial the made-up peers (see `quiet_bootstrap`).
                self.quiet_bootstrap();
                let size = self.routing_table().len();
                reply_ok(&id, json!({ "routing_table": size }));
            }
            "kad_load" => self.kad_load(req, id, deadline)?,
            "routing_table" => {
                let peers = self.routing_table();
                reply_ok(&id, json!({ "peers": peers }));
            }
            "connected" => {
                let peers: Vec<String> = self
                    .swarm
                    .connected_peers()
                    .map(|p| p.to_string())
                    .collect();
                reply_ok(&id, json!({ "peers": peers }));
            }
            other => return Err(format!("unsupported: {other}")),
        }
        Ok(())
    }

    /// A bootstrap that sends nothing: starting one by hand cancels the
    /// automatic bootstrap that inserting a peer into a small routing table
    /// scheduled (500 ms later), and pushes the periodic one 5 minutes out.
    /// It is finished at once, and so is each of its bucket refresh steps
    /// (see `on_kad`), before it sends a request or dials anybody.
    fn quiet_bootstrap(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if let Ok(qid) = kad.bootstrap() {
            if let Some(mut q) = kad.query_mut(&qid) {
                q.finish();
            }
            self.quiet.insert(qid);
        }
    }

    /// `kad_load`: check the arguments, connect to the server; `check_load`
    /// starts the load once connected.
    fn kad_load(&mut self, req: &Map<String, Value>, id: Value, deadline: Instant) -> Result<(), String> {
        if self.load.is_some() {
            return Err("kad_load: another kad_load is running".into());
        }
        let addr: Multiaddr = arg_str(req, "addr")?
            .parse()
            .map_err(|e| format!("bad multiaddr: {e}"))?;
        let target = match addr.iter().last() {
            Some(Protocol::P2p(p)) => p,
            _ => return Err("addr must end in /p2p/<peer id>".into()),
        };
        let mode = match arg_str(req, "mode")? {
            "new" => LoadMode::New,
            "reused" => LoadMode::Reused,
            other => return Err(format!("kad_load: mode must be \"new\" or \"reused\", not {other:?}")),
        };
        let inflight = req.get("inflight").and_then(Value::as_u64).unwrap_or(1) as usize;
        if !(1..=load::MAX_INFLIGHT).contains(&inflight) {
            return Err(format!("kad_load: inflight must be 1..{}", load::MAX_INFLIGHT));
        }
        let duration = req
            .get("duration")
            .and_then(Value::as_f64)
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or("kad_load: duration (seconds) missing or invalid")?;
        let seed = req.get("seed").and_then(Value::as_u64);
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&target, addr.clone());
        // a new routing table entry schedules a bootstrap (a FIND_NODE of our
        // own id to the server, then its bucket refreshes) that would run
        // during the load
        self.quiet_bootstrap();
        self.swarm.behaviour_mut().guard.target = Some(target);
        let mut conn = None;
        if !self.swarm.is_connected(&target) {
            let opts = DialOpts::peer_id(target)
                .addresses(vec![addr])
                .allocate_new_port()
                .build();
            let c = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => conn = Some(c),
                // a dial is under way already; wait for its connection
                Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => {
                    self.swarm.behaviour_mut().guard.target = None;
                    return Err(format!("kad_load: dial: {e}"));
                }
            }
        }
        self.load = Some(KadLoad {
            id,
            deadline,
            target,
            mode,
            inflight,
            duration: Duration::from_secs_f64(duration),
            keys: load::key_pool(seed),
            phase: LoadPhase::Connecting {
                conn,
                connected_at: None,
            },
        });
        self.check_load();
        Ok(())
    }

    /// Reply to the running `kad_load` and end it.
    fn end_load(&mut self, result: Result<Value, String>) {
        let Some(load) = self.load.take() else {
            return;
        };
        self.swarm.behaviour_mut().guard.target = None;
        match result {
            Ok(v) => reply_ok(&load.id, v),
            Err(e) => reply_err(&load.id, e),
        }
    }

    /// Progress of the running `kad_load` that is not driven by a query
    /// result: the connection (and identify) before it starts, timeouts of
    /// `new` requests.
    fn check_load(&mut self) {
        let now = Instant::now();
        let Some(load) = self.load.as_mut() else {
            return;
        };
        match &mut load.phase {
            LoadPhase::Connecting { connected_at, .. } => {
                if connected_at.is_none() && self.swarm.is_connected(&load.target) {
                    *connected_at = Some(now);
                }
                match *connected_at {
                    Some(t) if self.identified.contains_key(&load.target) || now >= t + IDENTIFY_GRACE => {
                        self.start_load()
                    }
                    _ if now >= load.deadline => {
                        self.end_load(Err("kad_load: timeout: no connection to the server".into()))
                    }
                    _ => {}
                }
            }
            LoadPhase::New(nl) => {
                let deadline = load.deadline;
                let mut expired = Vec::new();
                nl.running.retain(|(qid, t0)| {
                    if now >= (*t0 + load::REQUEST_TIMEOUT).min(deadline) {
                        expired.push(*qid);
                        false
                    } else {
                        true
                    }
                });
                for _ in &expired {
                    nl.stats.failed("no reply within 10 s");
                }
                for qid in &expired {
                    // its result, should it still come, is not ours any more
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(qid) {
                        q.finish();
                    }
                }
                for _ in &expired {
                    self.load_next();
                }
            }
            LoadPhase::Reused => {}
        }
    }

    /// Connected: start the `inflight` requests (`new`) or workers (`reused`).
    fn start_load(&mut self) {
        let Some(load) = self.load.as_mut() else {
            return;
        };
        let end = Instant::now() + load.duration;
        match load.mode {
            LoadMode::New => {
                let target = load.target;
                let others = self
                    .routing_table()
                    .into_iter()
                    .filter(|p| *p != target.to_string())
                    .count();
                if others > 0 {
                    // each query would also ask (or dial) those
                    self.end_load(Err(format!(
                        "kad_load: mode new needs the server to be the only peer in the routing table; \
                         it also holds {others} other(s)"
                    )));
                    return;
                }
                let Some(load) = self.load.as_mut() else {
                    return;
                };
                load.phase = LoadPhase::New(NewLoad {
                    end,
                    next: 0,
                    running: VecDeque::new(),
                    stats: LoadStats::default(),
                });
                for _ in 0..load.inflight {
                    self.load_next();
                }
            }
            LoadMode::Reused => {
                let frames: Arc<Vec<Vec<u8>>> = Arc::new(
                    load.keys
                        .iter()
                        .map(|k| load::find_node_frame(&k.to_bytes()))
                        .collect(),
                );
                let next = Arc::new(AtomicUsize::new(0));
                let workers: Vec<_> = (0..load.inflight)
                    .map(|_| {
                        tokio::spawn(load::reused_worker(
                            self.stream_control.clone(),
                            load.target,
                            frames.clone(),
                            next.clone(),
                            end,
                            load.deadline,
                        ))
                    })
                    .collect();
                let done = self.load_done.clone();
                tokio::spawn(async move {
                    let mut all = LoadStats::default();
                    for w in workers {
                        match w.await {
                            Ok(s) => all.merge(s),
                            Err(e) => all.failed(format!("worker: {e}")),
                        }
                    }
                    let _ = done.send(all);
                });
                load.phase = LoadPhase::Reused;
            }
        }
    }

    /// `new`: start another query while the load lasts; reply once the last
    /// one finished after that.
    fn load_next(&mut self) {
        let Some(KadLoad {
            keys,
            phase: LoadPhase::New(nl),
            ..
        }) = self.load.as_mut()
        else {
            return;
        };
        if Instant::now() < nl.end {
            let key = keys[nl.next % keys.len()];
            nl.next += 1;
            let t0 = Instant::now();
            let qid = self.swarm.behaviour_mut().kad.get_closest_peers(key);
            nl.running.push_back((qid, t0));
        } else if nl.running.is_empty() {
            let stats = std::mem::take(&mut nl.stats);
            self.end_load(stats.result());
        }
    }

    /// `new`: a query of the load finished; false if it is not one of ours.
    fn on_load_result(&mut self, qid: QueryId, result: &QueryResult, stats: &kad::QueryStats) -> bool {
        let Some(KadLoad {
            phase: LoadPhase::New(nl),
            ..
        }) = self.load.as_mut()
        else {
            return false;
        };
        let Some(pos) = nl.running.iter().position(|(q, _)| *q == qid) else {
            return false;
        };
        let (_, t0) = nl.running.remove(pos).expect("position found");
        match result {
            // The server answered: the query's one successful request. Each of
            // its other requests went to a peer of that reply (the server is
            // the only peer in the routing table) and failed at once (the dial
            // denied by the guard); so they count the reply's closer peers.
            QueryResult::GetClosestPeers(Ok(_)) if stats.num_successes() > 0 => {
                nl.stats.answered(t0, || {
                    stats.num_requests().saturating_sub(stats.num_successes()) as usize
                });
            }
            QueryResult::GetClosestPeers(Ok(_)) => {
                nl.stats.failed("FIND_NODE failed: libp2p-kad got no reply from the server")
            }
            QueryResult::GetClosestPeers(Err(e)) => nl.stats.failed(format!("kad query: {e}")),
            other => nl.stats.failed(format!("unexpected kad result: {other:?}")),
        }
        self.load_next();
        true
    }

    /// `reused`: the workers are done.
    fn on_load_done(&mut self, stats: LoadStats) {
        if matches!(&self.load, Some(KadLoad { phase: LoadPhase::Reused, .. })) {
            self.end_load(stats.result());
        }
    }

    /// Reply to dials that connected and either saw identify or waited long enough for it.
    fn check_dials(&mut self) {
        let now = Instant::now();
        let identified = &self.identified;
        self.dials.retain(|d| match d.connected_at {
            Some(t)
                if identified.contains_key(&d.peer)
                    || now >= t + IDENTIFY_GRACE
                    || now >= d.deadline =>
            {
                reply_ok(&d.id, json!({ "peer_id": d.peer.to_string() }));
                false
            }
            None if now >= d.deadline => {
                reply_err(&d.id, "timeout: dial did not connect");
                false
            }
            _ => true,
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.check_dials();
        self.check_load();
        for list in [&mut self.pings, &mut self.idents] {
            list.retain(|p| {
                if now >= p.deadline {
                    reply_err(&p.id, format!("timeout waiting for {}", p.peer));
                    false
                } else {
                    true
                }
            });
        }
        self.requests.retain(|_, r| {
            if now >= r.deadline {
                reply_err(&r.id, "timeout: no response");
                false
            } else {
                true
            }
        });
        let expired: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| now >= q.deadline)
            .map(|(k, _)| *k)
            .collect();
        for qid in expired {
            let q = self.queries.remove(&qid).unwrap();
            if let Some(mut running) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
                running.finish();
            }
            match q.kind {
                QueryKind::Providers { found, .. } if !found.is_empty() => {
                    reply_ok(&q.id, json!({ "providers": ids(&found) }));
                }
                QueryKind::RefDiscover { found } if !found.is_empty() => {
                    reply_ok(&q.id, json!({ "peers": ids(&found) }));
                }
                _ => reply_err(&q.id, "timeout: query did not finish in time"),
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.log(format!(
                    "connected {peer_id} via {}",
                    endpoint.get_remote_address()
                ));
                // a find_peer query that dialed its target: the address came
                // from a FIND_NODE answer (the target may be a DHT client,
                // which fails the query's request and so is not in its result)
                if endpoint.is_dialer() {
                    for q in self.queries.values_mut() {
                        if let QueryKind::FindPeer { target, dialed } = &mut q.kind {
                            let addr = endpoint.get_remote_address();
                            if *target == peer_id && !dialed.contains(addr) {
                                dialed.push(addr.clone());
                            }
                        }
                    }
                }
                let now = Instant::now();
                for d in self.dials.iter_mut() {
                    if d.connected_at.is_none()
                        && (d.peer == peer_id || d.conn == Some(connection_id))
                    {
                        d.connected_at = Some(now);
                    }
                }
                self.check_dials();
                self.check_load();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                self.log(format!("dial error {peer_id:?}: {error}"));
                self.dials.retain(|d| {
                    if d.conn == Some(connection_id) && d.connected_at.is_none() {
                        reply_err(&d.id, format!("dial failed: {error}"));
                        false
                    } else {
                        true
                    }
                });
                if let Some(KadLoad {
                    target,
                    phase: LoadPhase::Connecting { conn, .. },
                    ..
                }) = &self.load
                {
                    if (*conn == Some(connection_id) || peer_id == Some(*target))
                        && !self.swarm.is_connected(target)
                    {
                        self.end_load(Err(format!("kad_load: cannot reach the server: {error}")));
                    }
                }
                if let Some(p) = peer_id {
                    if !self.swarm.is_connected(&p) {
                        for list in [&mut self.pings, &mut self.idents] {
                            list.retain(|w| {
                                if w.peer == p {
                                    reply_err(&w.id, format!("dial failed: {error}"));
                                    false
                                } else {
                                    true
                                }
                            });
                        }
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                self.log(format!("connection to {peer_id} closed: {cause:?}"));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => self.on_identify(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.on_ping(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            _ => {}
        }
    }

    fn on_identify(&mut self, ev: identify::Event) {
        match ev {
            identify::Event::Received { peer_id, info, .. } => {
                self.log(format!(
                    "identified {peer_id}: {} {:?}",
                    info.agent_version, info.listen_addrs
                ));
                if info.protocols.contains(&kad::PROTOCOL_NAME) {
                    for addr in &info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                let result = identify_json(&info);
                self.identified.insert(peer_id, info);
                self.idents.retain(|w| {
                    if w.peer == peer_id {
                        reply_ok(&w.id, result.clone());
                        false
                    } else {
                        true
                    }
                });
                self.check_dials();
                self.check_load();
            }
            identify::Event::Error { peer_id, error, .. } => {
                self.log(format!("identify error with {peer_id}: {error}"));
            }
            _ => {}
        }
    }

    fn on_ping(&mut self, ev: ping::Event) {
        let peer = ev.peer;
        let outcome = ev.result.map_err(|e| e.to_string());
        self.pings.retain(|w| {
            if w.peer != peer {
                return true;
            }
            match &outcome {
                Ok(rtt) => reply_ok(&w.id, json!({ "rtt_ms": rtt.as_secs_f64() * 1000.0 })),
                Err(e) => reply_err(&w.id, format!("ping failed: {e}")),
            }
            false
        });
    }

    fn on_rr(&mut self, ev: request_response::Event<Value, Value>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.log(format!("json request from {peer}"));
                    let response = json!({
                        "echo": request,
                        "peer_id": self.local.to_string(),
                        "impl": IMPL,
                    });
                    if self
                        .swarm
                        .behaviour_mut()
                        .rr
                        .send_response(channel, response)
                        .is_err()
                    {
                        self.log("json response could not be sent");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(r) = self.requests.remove(&request_id) {
                        reply_ok(&r.id, json!({ "response": response }));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(r) = self.requests.remove(&request_id) {
                    reply_err(&r.id, format!("request failed: {error}"));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.log(format!("inbound json request from {peer} failed: {error}"));
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        if let kad::Event::OutboundQueryProgressed {
            id, result, stats, ..
        } = &ev
        {
            if self.on_load_result(*id, result, stats) {
                return;
            }
        }
        let (qid, result, step) = match ev {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => (id, result, step),
            kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            } => {
                self.log(format!("routing table: {peer} (new: {is_new_peer})"));
                return;
            }
            other => {
                self.log(format!("kad: {other:?}"));
                return;
            }
        };
        if self.quiet.contains(&qid) {
            if step.last {
                self.quiet.remove(&qid);
            } else {
                self.finish_query(qid);
            }
            return;
        }
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        // Some(reply) finishes the command; None keeps waiting.
        let done: Option<Result<Value, String>> = match (&mut q.kind, result) {
            (QueryKind::Bootstrap, QueryResult::Bootstrap(r)) => match r {
                Ok(ok) if step.last || ok.num_remaining == 0 => Some(Ok(json!({}))),
                Ok(_) => None,
                Err(e) => Some(Err(format!("bootstrap: {e}"))),
            },
            (QueryKind::Put, QueryResult::PutRecord(r)) => Some(match r {
                Ok(_) => Ok(json!({})),
                Err(kad::PutRecordError::QuorumFailed {
                    success, quorum, ..
                }) => Err(format!(
                    "put: quorum failed: stored on {} peer(s), needed {quorum}",
                    success.len()
                )),
                Err(e) => Err(format!("put: {e}")),
            }),
            (QueryKind::Get, QueryResult::GetRecord(r)) => match r {
                Ok(kad::GetRecordOk::FoundRecord(pr)) => {
                    let value = String::from_utf8_lossy(&pr.record.value).into_owned();
                    Some(Ok(json!({ "value": value })))
                }
                Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {
                    Some(Err("get: record not found".into()))
                }
                Err(e) => Some(Err(format!("get: {e}"))),
            },
            (QueryKind::RefAnnounce, QueryResult::PutRecord(r)) => Some(match r {
                Ok(_) => Ok(json!({})),
                Err(kad::PutRecordError::QuorumFailed { success, .. }) => Err(format!(
                    "ref_announce: quorum failed: stored on {} peer(s), needed 1",
                    success.len()
                )),
                Err(e) => Err(format!("ref_announce: {e}")),
            }),
            (QueryKind::RefDiscover { found }, QueryResult::GetRecord(r)) => {
                match r {
                    Ok(kad::GetRecordOk::FoundRecord(pr)) => {
                        match PeerId::from_bytes(&pr.record.value) {
                            Ok(p) if !found.contains(&p) => found.push(p),
                            Ok(_) => {}
                            Err(_) => self.log(format!(
                                "ref_discover: skipping a value that is not a PeerId ({} bytes)",
                                pr.record.value.len()
                            )),
                        }
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) if found.is_empty() => {
                        self.finish_query(qid);
                        reply_err(&q.id, format!("ref_discover: {e}"));
                        return;
                    }
                    Err(_) => {}
                }
                if step.last {
                    if found.is_empty() {
                        Some(Err("ref_discover: no record with a PeerId value found".into()))
                    } else {
                        Some(Ok(json!({ "peers": ids(found) })))
                    }
                } else {
                    None
                }
            }
            (QueryKind::Provide, QueryResult::StartProviding(r)) => Some(match r {
                Ok(_) => Ok(json!({})),
                Err(e) => Err(format!("provide: {e}")),
            }),
            (QueryKind::Providers { count, found }, QueryResult::GetProviders(r)) => {
                match r {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if !found.contains(&p) {
                                found.push(p);
                            }
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) if found.is_empty() => {
                        self.finish_query(qid);
                        reply_err(&q.id, format!("providers: {e}"));
                        return;
                    }
                    Err(_) => {}
                }
                if found.len() >= *count || step.last {
                    Some(Ok(json!({ "providers": ids(found) })))
                } else {
                    None
                }
            }
            (QueryKind::FindPeer { target, dialed }, QueryResult::GetClosestPeers(r)) => {
                let target = *target;
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let found = match peers.into_iter().find(|p| p.peer_id == target) {
                    Some(info) => Some(info.addrs),
                    // as go-libp2p-kad-dht's FindPeer: a target the query
                    // dialed counts as found (a DHT client does not answer
                    // FIND_NODE, so it is not among the query's peers)
                    None if !dialed.is_empty() => Some(Vec::new()),
                    None => None,
                };
                match found {
                    Some(mut addrs) => {
                        if addrs.is_empty() {
                            addrs = self.routing_addrs(&target);
                        }
                        if addrs.is_empty() {
                            addrs = dialed.clone();
                        }
                        let mut texts: Vec<String> = Vec::new();
                        for a in &addrs {
                            let t = strip_p2p(a);
                            if !texts.contains(&t) {
                                texts.push(t);
                            }
                        }
                        Some(Ok(json!({ "peer_id": target.to_string(), "addrs": texts })))
                    }
                    None => Some(Err(format!("find_peer: {target} not found"))),
                }
            }
            (QueryKind::Closest, QueryResult::GetClosestPeers(r)) => {
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let list: Vec<String> = peers.iter().map(|p| p.peer_id.to_string()).collect();
                Some(Ok(json!({ "peers": list })))
            }
            (_, other) => {
                self.log(format!("unexpected result for query {qid:?}: {other:?}"));
                None
            }
        };
        match done {
            Some(Ok(v)) => {
                self.finish_query(qid);
                reply_ok(&q.id, v);
            }
            Some(Err(e)) => {
                self.finish_query(qid);
                reply_err(&q.id, e);
            }
            None => {
                self.queries.insert(qid, q);
            }
        }
    }

    fn finish_query(&mut self, qid: QueryId) {
        if let Some(mut running) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
            running.finish();
        }
    }
}

fn ids(peers: &[PeerId]) -> Vec<String> {
    peers.iter().map(|p| p.to_string()).collect()
}

struct Args {
    /// `--listen`: one or more multiaddrs, comma-separated (TCP, and QUIC
    /// for a `/udp/<port>/quic-v1` one)
    listen: Vec<Multiaddr>,
    seed: Option<u64>,
    /// `--client`: Kademlia in client mode (no inbound kad streams).
    client: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        seed: None,
        client: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                args.listen = value()?
                    .split(',')
                    .map(|a| a.parse().map_err(|e| format!("bad --listen {a}: {e}")))
                    .collect::<Result<Vec<Multiaddr>, String>>()?
            }
            "--seed" => args.seed = Some(value()?.parse().map_err(|e| format!("bad --seed: {e}"))?),
            "--client" if inline.is_none() => args.client = true,
            _ => return Err(format!("unknown argument: {a}")),
        }
    }
    Ok(args)
}

fn build_swarm(keypair: Keypair, mode: Mode) -> Result<Swarm<Behaviour>, String> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("transport: {e}"))?
        .with_quic()
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(kad::PROTOCOL_NAME);
            kcfg.set_query_timeout(Duration::from_secs(60));
            let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), kcfg);
            // explicit: rust-libp2p would pick the mode from confirmed external addresses
            kad.set_mode(Some(mode));
            let identify = identify::Behaviour::new(
                identify::Config::new("/ipfs/0.1.0".into(), key.public())
                    .with_agent_version(AGENT.into()),
            );
            // A short interval so that `ping` commands get a fresh round trip quickly.
            let ping =
                ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1)));
            let rr = request_response::json::Behaviour::new(
                [(StreamProtocol::new(JSON_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            );
            Behaviour {
                guard: LoadGuard::default(),
                kad,
                identify,
                ping,
                rr,
                stream: libp2p_stream::Behaviour::new(),
            }
        })
        .map_err(|e| format!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args().unwrap_or_else(|e| fatal(e));
    let keypair = match args.seed {
        Some(n) => {
            let secret = Sha256::digest(format!("kadfast-interop-seed-{n}").as_bytes());
            Keypair::ed25519_from_bytes(secret.to_vec()).unwrap_or_else(|e| fatal(e))
        }
        None => Keypair::generate_ed25519(),
    };
    let local = keypair.public().to_peer_id();
    let mode = if args.client { Mode::Client } else { Mode::Server };
    let mut swarm = build_swarm(keypair, mode).unwrap_or_else(|e| fatal(e));
    for addr in &args.listen {
        swarm
            .listen_on(addr.clone())
            .unwrap_or_else(|e| fatal(format!("listen: {e}")));
    }

    // Wait for an address of every listener, then briefly for any others.
    let mut addrs: Vec<String> = Vec::new();
    loop {
        let wait = if addrs.len() < args.listen.len() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(100)
        };
        match tokio::time::timeout(wait, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => addrs.push(strip_p2p(&address)),
            Ok(SwarmEvent::ListenerError { error, .. }) => fatal(format!("listen: {error}")),
            Ok(SwarmEvent::ListenerClosed { reason, .. }) => {
                fatal(format!("listener closed: {reason:?}"))
            }
            Ok(_) => {}
            Err(_) if addrs.len() < args.listen.len() => fatal("a listener has no address after 10 s"),
            Err(_) => break,
        }
    }
    emit(&json!({"event": "ready", "impl": IMPL, "peer_id": local.to_string(), "addrs": addrs}));

    let (load_done, mut load_done_rx) = mpsc::unbounded_channel();
    let stream_control = swarm.behaviour().stream.new_control();
    let mut peer = Peer {
        swarm,
        local,
        queries: HashMap::new(),
        dials: Vec::new(),
        pings: Vec::new(),
        idents: Vec::new(),
        requests: HashMap::new(),
        identified: HashMap::new(),
        quiet: HashSet::new(),
        load: None,
        load_done,
        stream_control,
        debug: std::env::var_os("KADFAST_INTEROP_DEBUG").is_some_and(|v| !v.is_empty()),
    };

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if !peer.handle_line(&line) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            ev = peer.swarm.select_next_some() => peer.on_event(ev),
            Some(stats) = load_done_rx.recv() => peer.on_load_done(stats),
            _ = tick.tick() => peer.on_tick(),
        }
    }
    let _ = std::io::stdout().flush();
    // stdin is read on a blocking thread that would keep the runtime alive; leave at once.
    std::process::exit(0);
}
