// kadfast interop peer built on js-libp2p (libp2p 3.x, @libp2p/kad-dht 16.x).
//
// Speaks the JSON-lines control protocol of ../PROTOCOL.md: requests on stdin,
// replies and the "ready" event on stdout, logs on stderr only.
//
// Usage: node peer.mjs [--listen MULTIADDR] [--seed N] [--client]

// Node 20 lacks Promise.withResolvers, which libp2p 3.x uses. Install it
// before any libp2p module is loaded (hence the dynamic imports below).
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}

// stdout carries protocol lines only: route every console method to stderr.
for (const name of ['log', 'info', 'debug', 'trace', 'warn', 'dir']) {
  console[name] = (...args) => { console.error(...args) }
}

const IMPL = 'js'
const JSON_PROTOCOL = '/kadfast/json/1.0.0'
const RECORD_NAMESPACE = 'kadfast'
const DEFAULT_TIMEOUT_S = 30
const P2P_CODE = 421

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function log (...args) {
  console.error('[js-peer]', ...args)
}

function parseArgs (argv) {
  const opts = { listen: '/ip4/127.0.0.1/tcp/0', seed: undefined, client: false }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${arg}`)
      return argv[++i]
    }
    if (arg === '--listen') opts.listen = next()
    else if (arg.startsWith('--listen=')) opts.listen = arg.slice('--listen='.length)
    else if (arg === '--seed') opts.seed = next()
    else if (arg.startsWith('--seed=')) opts.seed = arg.slice('--seed='.length)
    else if (arg === '--client') opts.client = true
    else throw new Error(`unknown argument: ${arg}`)
  }
  if (opts.seed !== undefined) {
    if (!/^\d+$/.test(opts.seed) || Number(opts.seed) > 2 ** 31) {
      throw new Error(`--seed must be an integer in 0..2^31, got ${opts.seed}`)
    }
    opts.seed = String(Number(opts.seed))
  }
  return opts
}

function errMessage (err) {
  if (err == null) return 'unknown error'
  const name = err.name && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

let lib
try {
  const [
    { createLibp2p },
    { tcp },
    { noise },
    { yamux },
    { identify, identifyPush },
    { ping },
    { kadDHT },
    { generateKeyPairFromSeed, generateKeyPair },
    { peerIdFromString, peerIdFromPrivateKey },
    { multiaddr },
    { CID },
    { sha256 },
    { fromString: u8FromString },
    { toString: u8ToString },
    { createHash },
    readline,
    { setMaxListeners },
    { lpStream }
  ] = await Promise.all([
    import('libp2p'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/identify'),
    import('@libp2p/ping'),
    import('@libp2p/kad-dht'),
    import('@libp2p/crypto/keys'),
    import('@libp2p/peer-id'),
    import('@multiformats/multiaddr'),
    import('multiformats/cid'),
    import('multiformats/hashes/sha2'),
    import('uint8arrays/from-string'),
    import('uint8arrays/to-string'),
    import('node:crypto'),
    import('node:readline'),
    import('node:events'),
    // kad-dht's own framing helper (its network's pbStream wraps it)
    import('@libp2p/utils')
  ])
  lib = {
    createLibp2p, tcp, noise, yamux, identify, identifyPush, ping, kadDHT,
    generateKeyPairFromSeed, generateKeyPair, peerIdFromString, peerIdFromPrivateKey, multiaddr, CID,
    sha256, u8FromString, u8ToString, createHash, readline, setMaxListeners, lpStream
  }
} catch (err) {
  emit({ event: 'fatal', error: `cannot load libp2p modules: ${errMessage(err)}` })
  process.exit(1)
}

const RAW_CODEC = 0x55

function stripP2p (ma) {
  return ma.decapsulateCode(P2P_CODE).toString()
}

function utf8 (text) {
  if (typeof text !== 'string') throw new Error('expected a text key/value')
  return lib.u8FromString(text, 'utf8')
}

async function providerCid (text) {
  const digest = await lib.sha256.digest(utf8(text))
  return lib.CID.createV1(RAW_CODEC, digest)
}

function requireString (req, field) {
  const v = req[field]
  if (typeof v !== 'string' || v.length === 0) throw new Error(`missing argument: ${field}`)
  return v
}

function toPeerId (text) {
  try {
    return lib.peerIdFromString(text)
  } catch (err) {
    throw new Error(`invalid peer_id ${JSON.stringify(text)}: ${errMessage(err)}`)
  }
}

// The made-up address of the i-th kad_fill peer: a loopback address on port
// 1, where nothing listens (a dial is refused at once).
function fillAddr (i) {
  return lib.multiaddr(`/ip4/127.${1 + ((i >> 16) % 254)}.${(i >> 8) & 255}.${i & 255}/tcp/1`)
}

// The identity of the i-th kad_fill peer: random, or derived from the seed.
async function fillKey (seed, i) {
  if (seed === undefined) return lib.generateKeyPair('Ed25519')
  const secret = lib.createHash('sha256').update(`kadfast-interop-fill-${seed}-${i}`, 'utf8').digest()
  return lib.generateKeyPairFromSeed('Ed25519', new Uint8Array(secret))
}

async function readAll (stream) {
  const parts = []
  let total = 0
  for await (const chunk of stream) {
    const bytes = chunk.subarray()
    parts.push(bytes)
    total += bytes.length
  }
  const out = new Uint8Array(total)
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
}

// ---- kad_load: a FIND_NODE load generator (see ../PROTOCOL.md) -------------
// The benchmark that drives it measures the server's CPU per request, so the
// client side stays lean: the requests are encoded once, nothing is logged
// per request, and only the first reply is decoded (to count its peers).

const KAD_PROTOCOL = '/ipfs/kad/1.0.0'
const LOAD_POOL_SIZE = 256
const LOAD_MAX_INFLIGHT = 256
const LOAD_REQUEST_TIMEOUT_MS = 10_000
// js-libp2p allows 64 outbound streams of a protocol per connection (kad-dht's
// maxOutboundStreams in server mode, the registrar's default in client mode);
// a load opens up to LOAD_MAX_INFLIGHT at once, plus `new` streams that are
// closed on our side and wait for the server's close
const LOAD_MAX_STREAMS = 1024

// The i-th request's key: the PeerId bytes of a random Ed25519 identity, or
// with a seed of the one whose secret key is sha256("kadfast-interop-load-
// <seed>-<i>") (as the rust and go peers do).
async function loadKey (seed, i) {
  let key
  if (seed === undefined) {
    key = await lib.generateKeyPair('Ed25519')
  } else {
    const secret = lib.createHash('sha256').update(`kadfast-interop-load-${seed}-${i}`, 'utf8').digest()
    key = await lib.generateKeyPairFromSeed('Ed25519', new Uint8Array(secret))
  }
  return lib.peerIdFromPrivateKey(key).toMultihash().bytes
}

// A kad Message of type FIND_NODE (field 1 = 4) for `key` (field 2), encoded
// by hand (kad-dht does not export its codec): the bytes kad-dht's own
// FIND_NODE requests carry (it sets no clusterLevel).
function findNodeMessage (key) {
  const len = []
  for (let n = key.length; ; n >>>= 7) {
    if (n < 0x80) { len.push(n); break }
    len.push((n & 0x7f) | 0x80)
  }
  const out = new Uint8Array(3 + len.length + key.length)
  out.set([0x08, 0x04, 0x12, ...len])
  out.set(key, 3 + len.length)
  return out
}

// The closer peers (field 8) in an encoded kad Message, by a walk over its
// top-level fields; -1 if it does not parse.
function countCloserPeers (buf) {
  let pos = 0
  let count = 0
  const varint = () => {
    let v = 0
    for (let shift = 0; shift < 64; shift += 7) {
      if (pos >= buf.length) return -1
      const b = buf[pos++]
      v += (b & 0x7f) * 2 ** shift
      if ((b & 0x80) === 0) return v
    }
    return -1
  }
  while (pos < buf.length) {
    const tag = varint()
    if (tag < 0) return -1
    switch (tag % 8) {
      case 0: if (varint() < 0) return -1; break
      case 1: pos += 8; break
      case 2: {
        const len = varint()
        if (len < 0) return -1
        pos += len
        if (Math.floor(tag / 8) === 8) count++
        break
      }
      case 5: pos += 4; break
      default: return -1
    }
    if (pos > buf.length) return -1
  }
  return count
}

// What a kad_load measured (one object for all its workers: one thread).
class LoadStats {
  latencies = [] // milliseconds, one per answered request
  errors = 0
  firstError = undefined
  closerPeers = undefined // in the first reply
  firstStart = undefined // of the answered requests: the earliest start
  lastReply = undefined

  answered (t0, t1, reply) {
    this.latencies.push(t1 - t0)
    if (this.firstStart === undefined || t0 < this.firstStart) this.firstStart = t0
    if (this.lastReply === undefined || t1 > this.lastReply) this.lastReply = t1
    if (this.closerPeers === undefined) this.closerPeers = countCloserPeers(reply.subarray())
  }

  failed (err) {
    this.errors++
    if (this.firstError === undefined) this.firstError = errMessage(err)
  }

  result () {
    const n = this.latencies.length
    if (n === 0) {
      throw new Error(`kad_load: no request answered (${this.errors} failed): ${this.firstError ?? 'no request was sent'}`)
    }
    const sorted = Float64Array.from(this.latencies).sort()
    // nearest rank: the smallest value with at least p% of all at or below it
    const rank = (p) => sorted[Math.min(Math.max(Math.ceil((p / 100) * n), 1), n) - 1]
    let sum = 0
    for (const l of sorted) sum += l
    const out = {
      requests: n,
      elapsed: (this.lastReply - this.firstStart) / 1000,
      p50_ms: rank(50),
      p99_ms: rank(99),
      mean_ms: sum / n,
      errors: this.errors,
      closer_peers: this.closerPeers
    }
    if (this.errors > 0) out.error = this.firstError
    return out
  }
}

// A signal that aborts after LOAD_REQUEST_TIMEOUT_MS or with `parent`; done()
// clears its timer and listener.
function requestSignal (parent) {
  const controller = new AbortController()
  const onAbort = () => controller.abort(parent.reason)
  parent.addEventListener('abort', onAbort, { once: true })
  const timer = setTimeout(() => {
    controller.abort(new Error(`no reply within ${LOAD_REQUEST_TIMEOUT_MS / 1000} s`))
  }, LOAD_REQUEST_TIMEOUT_MS)
  return {
    signal: controller.signal,
    done () {
      clearTimeout(timer)
      parent.removeEventListener('abort', onAbort)
    }
  }
}

async function main () {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    emit({ event: 'fatal', error: errMessage(err) })
    process.exit(2)
  }

  let privateKey
  if (opts.seed !== undefined) {
    const secret = lib.createHash('sha256').update(`kadfast-interop-seed-${opts.seed}`, 'utf8').digest()
    privateKey = await lib.generateKeyPairFromSeed('Ed25519', new Uint8Array(secret))
  } else {
    privateKey = await lib.generateKeyPair('Ed25519')
  }

  const node = await lib.createLibp2p({
    privateKey,
    addresses: { listen: [opts.listen] },
    transports: [lib.tcp()],
    connectionEncrypters: [lib.noise()],
    streamMuxers: [lib.yamux()],
    connectionManager: {
      // tests open many connections from one host in bursts: do not throttle
      maxConnections: 10_000,
      inboundConnectionThreshold: 10_000,
      maxIncomingPendingConnections: 10_000,
      maxParallelDials: 200
    },
    services: {
      // js allows 1 inbound identify stream and 1 outbound ping stream per
      // connection by default; the other peers' automatic identify and the
      // harness's own identify/ping commands can overlap with js's (kad-dht
      // pings a peer before it enters the table): allow a few
      identify: lib.identify({ maxInboundStreams: 4, maxOutboundStreams: 4 }),
      identifyPush: lib.identifyPush(),
      ping: lib.ping({ maxInboundStreams: 4, maxOutboundStreams: 4 }),
      dht: lib.kadDHT({
        protocol: '/ipfs/kad/1.0.0',
        // --client: kad-dht does not serve the protocol (nor lists it in identify)
        clientMode: opts.client,
        // in server mode its handler's limit is the one kad_load's streams
        // meet (see LOAD_MAX_STREAMS)
        maxOutboundStreams: LOAD_MAX_STREAMS,
        // keep loopback / private addresses (the default mapper drops them)
        peerInfoMapper: (peerInfo) => peerInfo,
        validators: {
          [RECORD_NAMESPACE]: async () => {}
        },
        selectors: {
          [RECORD_NAMESPACE]: () => 0
        }
      })
    }
  })

  if (!node.status || node.status !== 'started') {
    await node.start()
  }

  const dht = node.services.dht
  const selfId = node.peerId.toString()

  // identify results we have seen, by peer id
  const identified = new Map()
  const identifyWaiters = new Map()
  node.addEventListener('peer:identify', (evt) => {
    const key = evt.detail.peerId.toString()
    // identify-push messages also land here and may lack fields (such as
    // observedAddr) that the first identify answer carried: keep those
    const previous = identified.get(key)
    const result = { ...evt.detail }
    if (previous != null) {
      for (const field of ['observedAddr', 'agentVersion', 'protocolVersion']) {
        if (result[field] == null) result[field] = previous[field]
      }
    }
    identified.set(key, result)
    const waiters = identifyWaiters.get(key)
    if (waiters != null) {
      identifyWaiters.delete(key)
      for (const w of waiters) w(result)
    }
  })

  // ---- /kadfast/json/1.0.0 responder: read to end, echo, close -------------
  await node.handle(JSON_PROTOCOL, async (stream, connection) => {
    try {
      const raw = await readAll(stream)
      let body = null
      const text = new TextDecoder().decode(raw)
      try {
        body = text.length === 0 ? null : JSON.parse(text)
      } catch {
        body = text
      }
      const reply = { echo: body, peer_id: selfId, impl: IMPL }
      stream.send(utf8(JSON.stringify(reply)))
      await stream.close()
    } catch (err) {
      log('json handler error from', connection?.remotePeer?.toString(), errMessage(err))
      try { stream.abort(err) } catch {}
    }
  }, { maxInboundStreams: 1024, maxOutboundStreams: 1024 })

  function routingTablePeers () {
    const kb = dht.routingTable?.kb
    if (kb == null) return []
    return [...kb.toIterable()].map(p => p.peerId.toString())
  }

  // kad-dht parks queries until its routing table holds a peer. When there is
  // no peer at all (empty table, no connection) nothing can arrive, so fail
  // fast instead of waiting for the timeout; with a connection open (e.g. a
  // peer that just dialled us and is being added) let kad-dht wait.
  function isolated () {
    return dht.routingTable.size === 0 && node.getConnections().length === 0
  }

  function requireNetwork () {
    if (isolated()) throw new Error('no peers: routing table is empty and nothing is connected')
  }

  function inRoutingTable (peerId) {
    const s = peerId.toString()
    return routingTablePeers().includes(s)
  }

  async function waitIdentify (peerId, connection, signal) {
    const key = peerId.toString()
    const cached = identified.get(key)
    if (cached != null) return cached
    // identify runs automatically on connection open; wait a little for it,
    // then ask explicitly
    const viaEvent = new Promise((resolve) => {
      const list = identifyWaiters.get(key) ?? []
      list.push(resolve)
      identifyWaiters.set(key, list)
    })
    const timer = new Promise((resolve) => setTimeout(() => resolve(null), 3000))
    const res = await Promise.race([viaEvent, timer])
    if (res != null) return res
    return node.services.identify.identify(connection, { signal })
  }

  // ---- commands -------------------------------------------------------------
  const commands = {
    async dial (req, signal) {
      const ma = lib.multiaddr(requireString(req, 'addr'))
      const idText = ma.getComponents().findLast(c => c.code === P2P_CODE)?.value
      if (idText == null) throw new Error('addr must end with /p2p/<peer id>')
      const peerId = toPeerId(idText)
      const conn = await node.dial(ma, { signal })
      const remote = conn.remotePeer
      if (!remote.equals(peerId)) throw new Error(`dialled ${remote} but expected ${peerId}`)
      const addr = ma.decapsulateCode(P2P_CODE)
      await node.peerStore.merge(remote, { multiaddrs: [addr] }, { signal })
      // add to the Kademlia routing table (kad-dht pings the peer first)
      if (!inRoutingTable(remote)) {
        try {
          await dht.routingTable.add(remote, { signal })
        } catch (err) {
          log('routing table add failed for', remote.toString(), errMessage(err))
        }
        if (!inRoutingTable(remote)) {
          log('warning: peer', remote.toString(), 'not in routing table after dial')
        }
      }
      return { peer_id: remote.toString() }
    },

    async bootstrap (req, signal) {
      requireNetwork()
      // self lookup, as a Kademlia bootstrap does
      let found = 0
      for await (const event of dht.getClosestPeers(node.peerId.toMultihash().bytes, { signal })) {
        if (event.name === 'FINAL_PEER') found++
      }
      log('bootstrap finished, closest peers found:', found)
      return {}
    },

    async put (req, signal) {
      const keyText = requireString(req, 'key')
      if (typeof req.value !== 'string') throw new Error('missing argument: value')
      const quorum = req.quorum == null ? 1 : Number(req.quorum)
      if (!Number.isInteger(quorum) || quorum < 0) throw new Error('quorum must be a non-negative integer')
      const key = utf8(keyText)
      const value = utf8(req.value)
      if (quorum > 0) requireNetwork()
      const acked = new Set()
      const failed = new Set()
      const { promise: metQuorum, resolve: onQuorum } = Promise.withResolvers()
      if (quorum === 0) onQuorum()
      const run = (async () => {
        for await (const event of dht.put(key, value, { signal })) {
          if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') {
            acked.add(event.from.toString())
          } else if (event.name === 'QUERY_ERROR' && event.from != null) {
            failed.add(event.from.toString())
          }
          let ok = 0
          for (const p of acked) if (!failed.has(p)) ok++
          if (ok >= quorum) onQuorum()
        }
      })()
      const done = run.then(() => 'done', (err) => { throw err })
      const first = await Promise.race([metQuorum.then(() => 'quorum'), done])
      if (first === 'quorum') {
        run.catch((err) => log('put continued in background and failed:', errMessage(err)))
        return {}
      }
      let ok = 0
      for (const p of acked) if (!failed.has(p)) ok++
      if (ok >= quorum) return {}
      throw new Error(`put quorum not met: ${ok} of ${quorum} acknowledgements`)
    },

    async get (req, signal) {
      const key = utf8(requireString(req, 'key'))
      if (isolated()) {
        try {
          const rec = await dht.contentFetching.getLocal(key, { signal })
          return { value: lib.u8ToString(rec.value, 'utf8') }
        } catch (err) {
          throw new Error(`not found (no peers, not stored locally): ${errMessage(err)}`)
        }
      }
      // first value found (local store first, then the network)
      const controller = new AbortController()
      const both = AbortSignal.any([signal, controller.signal])
      try {
        for await (const event of dht.contentFetching.getMany(key, { signal: both })) {
          if (event.name === 'VALUE') {
            return { value: lib.u8ToString(event.value, 'utf8') }
          }
        }
      } finally {
        controller.abort()
      }
      throw new Error('not found')
    },

    async provide (req, signal) {
      const cid = await providerCid(requireString(req, 'key'))
      requireNetwork()
      let sent = 0
      for await (const event of dht.provide(cid, { signal })) {
        if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') sent++
      }
      if (sent === 0) throw new Error('provider record was sent to no peer')
      return {}
    },

    async providers (req, signal) {
      const cid = await providerCid(requireString(req, 'key'))
      const count = req.count == null ? 1 : Number(req.count)
      const found = []
      const addrs = {}
      if (isolated()) {
        const local = await dht.providers.getProviders(cid, { signal })
        return { providers: local.slice(0, Math.max(count, 0)).map(p => p.toString()) }
      }
      const controller = new AbortController()
      const both = AbortSignal.any([signal, controller.signal])
      try {
        for await (const event of dht.findProviders(cid, { signal: both })) {
          if (event.name !== 'PROVIDER') continue
          for (const p of event.providers) {
            const id = p.id.toString()
            if (!found.includes(id)) found.push(id)
            const known = addrs[id] ?? []
            for (const a of p.multiaddrs ?? []) {
              const text = stripP2p(a)
              if (!known.includes(text)) known.push(text)
            }
            addrs[id] = known
          }
          if (found.length >= count) break
        }
      } catch (err) {
        if (found.length === 0) throw err
      } finally {
        controller.abort()
      }
      return { providers: found, addrs }
    },

    async find_peer (req, signal) {
      const peerId = toPeerId(requireString(req, 'peer_id'))
      requireNetwork()
      const controller = new AbortController()
      const both = AbortSignal.any([signal, controller.signal])
      try {
        // useCache: false forces a network lookup instead of the peer store
        // addresses of the target as the peers on the way named it: a peer
        // that answers FIND_NODE for its own id with itself but no addresses
        // (py-libp2p 0.8) makes js yield a FINAL_PEER without any
        const seen = new Set()
        for await (const event of dht.findPeer(peerId, { signal: both, useCache: false })) {
          if (event.name === 'PEER_RESPONSE') {
            for (const p of event.closer ?? []) {
              if (p.id.equals(peerId)) p.multiaddrs.forEach(a => seen.add(stripP2p(a)))
            }
          }
          if (event.name === 'FINAL_PEER' && event.peer.id.equals(peerId)) {
            event.peer.multiaddrs.forEach(a => seen.add(stripP2p(a)))
            if (seen.size > 0) return { peer_id: event.peer.id.toString(), addrs: [...seen] }
          }
        }
        if (seen.size > 0) return { peer_id: peerId.toString(), addrs: [...seen] }
      } finally {
        controller.abort()
      }
      throw new Error('peer not found')
    },

    async closest (req, signal) {
      let key
      if (typeof req.peer_id === 'string' && req.peer_id.length > 0) {
        key = toPeerId(req.peer_id).toMultihash().bytes
      } else {
        key = utf8(requireString(req, 'key'))
      }
      requireNetwork()
      const peers = []
      for await (const event of dht.getClosestPeers(key, { signal })) {
        if (event.name === 'FINAL_PEER') {
          const id = event.peer.id.toString()
          if (!peers.includes(id)) peers.push(id)
        }
      }
      return { peers }
    },

    async ping (req, signal) {
      const peerId = toPeerId(requireString(req, 'peer_id'))
      const rtt = await node.services.ping.ping(peerId, { signal })
      return { rtt_ms: Number(rtt) }
    },

    async identify (req, signal) {
      const peerId = toPeerId(requireString(req, 'peer_id'))
      let conn = node.getConnections(peerId).find(c => c.status === 'open')
      if (conn == null) conn = await node.dial(peerId, { signal })
      const r = await waitIdentify(peerId, conn, signal)
      return {
        protocols: [...(r.protocols ?? [])],
        agent_version: r.agentVersion ?? '',
        protocol_version: r.protocolVersion ?? '',
        listen_addrs: (r.listenAddrs ?? []).map(a => a.toString()),
        observed_addr: r.observedAddr != null ? r.observedAddr.toString() : ''
      }
    },

    async request (req, signal) {
      const peerId = toPeerId(requireString(req, 'peer_id'))
      if (!('body' in req)) throw new Error('missing argument: body')
      const stream = await node.dialProtocol(peerId, JSON_PROTOCOL, { signal })
      try {
        stream.send(utf8(JSON.stringify(req.body)))
        await stream.close({ signal }) // half-close: the responder reads to end
        const raw = await readAll(stream)
        const text = new TextDecoder().decode(raw)
        let response
        try {
          response = JSON.parse(text)
        } catch {
          throw new Error(`response is not JSON: ${JSON.stringify(text.slice(0, 200))}`)
        }
        return { response }
      } catch (err) {
        try { stream.abort(err) } catch {}
        throw err
      }
    },

    // Made-up peers put into the routing table as if we had met them: the
    // address goes into the peer store (FIND_NODE replies take it from
    // there), the peer into the k-bucket trie with a fresh lastPing. The
    // public routingTable.add() would ping every new contact first (and ping
    // the oldest contacts of a full bucket); the trie's own insert skips the
    // ping for a contact seen within lastPingThreshold (10 min), and for the
    // same reason never pings these contacts to evict them from a full
    // bucket: a peer whose bucket is full and can split no further is left
    // out. Kad-dht's self-query, which was waiting for a first peer, then
    // runs once: it takes its 20 peers from the table and ends within some
    // 50 ms, aborting the dials it had started; it runs again in 5 minutes.
    async kad_fill (req, signal) {
      const count = Number(req.count)
      if (req.count == null || !Number.isInteger(count) || count < 0) throw new Error('missing argument: count')
      const seed = req.seed == null ? undefined : String(req.seed)
      const kb = dht.routingTable.kb
      if (kb == null) throw new Error('routing table not started')
      for (let i = 0; i < count; i++) {
        const peerId = lib.peerIdFromPrivateKey(await fillKey(seed, i))
        const kadId = (await lib.sha256.digest(peerId.toMultihash().bytes)).digest
        await node.peerStore.merge(peerId, { multiaddrs: [fillAddr(i)] }, { signal })
        await kb._add({ peerId, kadId, lastPing: Date.now() }, { signal })
        if (kb.get(kadId) == null) await node.peerStore.delete(peerId, { signal })
      }
      return { routing_table: dht.routingTable.size }
    },

    // `inflight` workers send FIND_NODE requests to the server at `addr` for
    // `duration` seconds over one connection, each stream opened the way
    // kad-dht's network opens its streams (libp2p.dialProtocol by PeerId:
    // connectionManager.openStream on the existing connection, full
    // multistream-select negotiation) and framed with kad-dht's own
    // length-prefix helper (@libp2p/utils lpStream, which its pbStream wraps).
    async kad_load (req, signal) {
      const ma = lib.multiaddr(requireString(req, 'addr'))
      const idText = ma.getComponents().findLast(c => c.code === P2P_CODE)?.value
      if (idText == null) throw new Error('addr must end with /p2p/<peer id>')
      const peerId = toPeerId(idText)
      const mode = req.mode
      if (mode !== 'new' && mode !== 'reused') {
        throw new Error(`kad_load: mode must be "new" or "reused", not ${JSON.stringify(mode)}`)
      }
      const inflight = req.inflight == null ? 1 : Number(req.inflight)
      if (!Number.isInteger(inflight) || inflight < 1 || inflight > LOAD_MAX_INFLIGHT) {
        throw new Error(`kad_load: inflight must be 1..${LOAD_MAX_INFLIGHT}`)
      }
      const duration = Number(req.duration)
      if (req.duration == null || !Number.isFinite(duration) || duration < 0) {
        throw new Error('kad_load: duration (seconds) missing or invalid')
      }
      const seed = req.seed == null ? undefined : String(req.seed)
      const bodies = []
      for (let i = 0; i < LOAD_POOL_SIZE; i++) bodies.push(findNodeMessage(await loadKey(seed, i)))

      // one connection, kept for later loads
      let conn = node.getConnections(peerId).find(c => c.status === 'open')
      if (conn == null) {
        try {
          conn = await node.dial(ma, { signal })
        } catch (err) {
          throw new Error(`kad_load: cannot reach the server: ${errMessage(err)}`)
        }
        // dialProtocol by PeerId redials from the peer store should it close
        await node.peerStore.merge(peerId, { multiaddrs: [ma.decapsulateCode(P2P_CODE)] }, { signal })
      }
      try {
        await waitIdentify(peerId, conn, signal)
      } catch (err) {
        log('kad_load: identify of the server failed:', errMessage(err))
      }

      // each worker's request listens to the command's signal
      lib.setMaxListeners(Infinity, signal)
      const stats = new LoadStats()
      const end = performance.now() + duration * 1000
      const streamOptions = (s) => ({ signal: s, maxOutboundStreams: LOAD_MAX_STREAMS })
      let next = 0

      // a new stream per request: open, write, read one framed reply, close
      // (half-close, not awaited: what kad-dht's sendRequest does)
      async function newWorker () {
        while (!signal.aborted && performance.now() < end) {
          const body = bodies[next++ % bodies.length]
          const rs = requestSignal(signal)
          let stream
          try {
            const t0 = performance.now()
            stream = await node.dialProtocol(peerId, KAD_PROTOCOL, streamOptions(rs.signal))
            const lp = lib.lpStream(stream)
            await lp.write(body, { signal: rs.signal })
            const reply = await lp.read({ signal: rs.signal })
            stats.answered(t0, performance.now(), reply)
            const s = stream
            s.close().catch((err) => s.abort(err))
          } catch (err) {
            stats.failed(err)
            stream?.abort(err)
          } finally {
            rs.done()
          }
        }
      }

      // one stream, every request on it in turn (a new one after a failure);
      // half-closed at the end
      async function reusedWorker () {
        let stream
        let lp
        while (!signal.aborted && performance.now() < end) {
          const body = bodies[next++ % bodies.length]
          const rs = requestSignal(signal)
          try {
            if (stream == null) {
              stream = await node.dialProtocol(peerId, KAD_PROTOCOL, streamOptions(rs.signal))
              lp = lib.lpStream(stream)
            }
            const t0 = performance.now()
            await lp.write(body, { signal: rs.signal })
            const reply = await lp.read({ signal: rs.signal })
            stats.answered(t0, performance.now(), reply)
          } catch (err) {
            stats.failed(err)
            stream?.abort(err)
            stream = undefined
          } finally {
            rs.done()
          }
        }
        if (stream != null) {
          const s = stream
          s.close().catch((err) => s.abort(err))
        }
      }

      const worker = mode === 'new' ? newWorker : reusedWorker
      const workers = []
      for (let i = 0; i < inflight; i++) workers.push(worker())
      await Promise.all(workers)
      return stats.result()
    },

    async routing_table () {
      return { peers: routingTablePeers() }
    },

    async connected () {
      return { peers: [...new Set(node.getPeers().map(p => p.toString()))] }
    }
  }

  // ---- control loop -----------------------------------------------------------
  let stopping = false
  async function shutdown (code) {
    if (stopping) return
    stopping = true
    const force = setTimeout(() => process.exit(code), 3000)
    force.unref()
    try {
      await node.stop()
    } catch (err) {
      log('stop error:', errMessage(err))
    }
    process.stdout.write('', () => process.exit(code))
  }

  async function handle (req) {
    const id = req.id
    const cmd = req.cmd
    if (cmd === 'stop') {
      process.stdout.write(JSON.stringify({ id, ok: true, result: {} }) + '\n', () => { void shutdown(0) })
      return
    }
    const fn = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined
    if (fn == null) {
      emit({ id, ok: false, error: `unsupported: ${cmd}` })
      return
    }
    let timeoutS = req.timeout == null ? DEFAULT_TIMEOUT_S : Number(req.timeout)
    if (!Number.isFinite(timeoutS) || timeoutS <= 0) timeoutS = DEFAULT_TIMEOUT_S
    const controller = new AbortController()
    let timer
    const timedOut = new Promise((resolve, reject) => {
      timer = setTimeout(() => {
        const err = new Error(`timeout after ${timeoutS}s`)
        controller.abort(err)
        // give the command a moment to unwind on its own
        setTimeout(() => reject(err), 250)
      }, timeoutS * 1000)
    })
    try {
      const result = await Promise.race([fn(req, controller.signal), timedOut])
      emit({ id, ok: true, result })
    } catch (err) {
      let msg = errMessage(err)
      if (controller.signal.aborted && !msg.includes('timeout after')) msg = `timeout after ${timeoutS}s: ${msg}`
      emit({ id, ok: false, error: msg })
    } finally {
      clearTimeout(timer)
    }
  }

  const rl = lib.readline.createInterface({ input: process.stdin, terminal: false })
  rl.on('line', (line) => {
    if (line.trim().length === 0) return
    let req
    try {
      req = JSON.parse(line)
    } catch (err) {
      emit({ id: null, ok: false, error: `bad request line: ${errMessage(err)}` })
      return
    }
    if (req == null || typeof req !== 'object' || Array.isArray(req)) {
      emit({ id: null, ok: false, error: 'request must be a JSON object' })
      return
    }
    handle(req).catch((err) => emit({ id: req.id, ok: false, error: errMessage(err) }))
  })
  rl.on('close', () => { void shutdown(0) })

  process.on('SIGTERM', () => { void shutdown(0) })
  process.on('SIGINT', () => { void shutdown(0) })

  const addrs = [...new Set(node.getMultiaddrs().map(stripP2p))]
  emit({ event: 'ready', impl: IMPL, peer_id: selfId, addrs })
}

process.on('unhandledRejection', (err) => {
  log('unhandled rejection:', errMessage(err))
})

main().catch((err) => {
  emit({ event: 'fatal', error: errMessage(err) })
  process.exit(1)
})
