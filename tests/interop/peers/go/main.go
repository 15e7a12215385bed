// kadfast-interop-go: a go-libp2p + go-libp2p-kad-dht peer driven by the
// JSON-lines control protocol described in ../PROTOCOL.md.
//
// stdout carries protocol lines only; everything else goes to stderr.
package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/multiformats/go-multihash"
	msmux "github.com/multiformats/go-multistream"
	"google.golang.org/protobuf/proto"
)

const (
	implName       = "go"
	jsonProtocol   = protocol.ID("/kadfast/json/1.0.0")
	kadProtocol    = protocol.ID("/ipfs/kad/1.0.0")
	recordNS       = "kadfast"
	defaultTimeout = 30 * time.Second
	maxJSONBody    = 4 << 20
)

// ---------------------------------------------------------------- output

var stdoutMu sync.Mutex

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		logf("cannot encode output line: %v", err)
		return
	}
	b = append(b, '\n')
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	if _, err := os.Stdout.Write(b); err != nil {
		logf("stdout write failed: %v", err)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[kadfast-interop-go] "+format+"\n", args...)
}

func fatal(err error) {
	emit(map[string]any{"event": "fatal", "error": err.Error()})
	os.Exit(1)
}

// ---------------------------------------------------------------- validator

// anyValueValidator accepts every value and always prefers the first one.
type anyValueValidator struct{}

func (anyValueValidator) Validate(string, []byte) error { return nil }

func (anyValueValidator) Select(_ string, vals [][]byte) (int, error) {
	if len(vals) == 0 {
		return 0, errors.New("no values to select from")
	}
	return 0, nil
}

// ---------------------------------------------------------------- peer state

type identifyInfo struct {
	protocols       []string
	agentVersion    string
	protocolVersion string
	listenAddrs     []string
	observedAddr    string
}

type node struct {
	h       host.Host
	priv    crypto.PrivKey
	kad     *dht.IpfsDHT
	msgr    *dhtpb.ProtocolMessenger
	values  *records.ValueStore
	idSvc   identify.IDService
	selfStr string

	idMu   sync.Mutex
	idInfo map[peer.ID]identifyInfo
}

type request struct {
	ID      json.RawMessage `json:"id"`
	Cmd     string          `json:"cmd"`
	Addr    string          `json:"addr"`
	Key     *string         `json:"key"`
	Value   string          `json:"value"`
	Quorum  *int            `json:"quorum"`
	Count   *int            `json:"count"`
	Seed    *uint64         `json:"seed"`
	PeerID  string          `json:"peer_id"`
	Body    json.RawMessage `json:"body"`
	Timeout *float64        `json:"timeout"`

	// binary keys and values (base64), for /ipns/ records: they take the
	// place of key and value in put and get where given
	KeyB64   *string `json:"key_b64"`
	ValueB64 *string `json:"value_b64"`
	// ipns_record arguments
	Seq        *uint64  `json:"seq"`
	EOLSeconds *float64 `json:"eol_seconds"`
	V1         *bool    `json:"v1"`
	// kad_load arguments
	Mode     string   `json:"mode"`
	Inflight *int     `json:"inflight"`
	Duration *float64 `json:"duration"`
}

func seedKey(seed uint64) (crypto.PrivKey, error) {
	secret := sha256.Sum256([]byte("kadfast-interop-seed-" + strconv.FormatUint(seed, 10)))
	full := ed25519.NewKeyFromSeed(secret[:]) // 64 bytes: seed || public key
	return crypto.UnmarshalEd25519PrivateKey(full)
}

func agentVersion() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/libp2p/go-libp2p" {
				v = dep.Version
			}
		}
	}
	return "kadfast-interop-go go-libp2p/" + v
}

func main() {
	flags := flag.NewFlagSet("kadfast-interop-go", flag.ContinueOnError)
	flags.SetOutput(os.Stderr)
	listen := flags.String("listen", "/ip4/127.0.0.1/tcp/0", "listen multiaddrs, comma-separated (TCP and /udp/.../quic-v1)")
	client := flags.Bool("client", false, "run Kademlia in client mode (do not serve "+string(kadProtocol)+")")
	seed := flags.Int64("seed", -1, "deterministic identity seed (0..2^31)")
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(fmt.Errorf("arguments: %w", err))
	}
	if *seed > 1<<31 {
		fatal(fmt.Errorf("--seed must be in 0..2^31, got %d", *seed))
	}

	var priv crypto.PrivKey
	var err error
	if *seed >= 0 {
		priv, err = seedKey(uint64(*seed))
	} else {
		priv, _, err = crypto.GenerateEd25519Key(nil)
	}
	if err != nil {
		fatal(fmt.Errorf("identity: %w", err))
	}

	rm, err := resourceManager()
	if err != nil {
		fatal(fmt.Errorf("resource manager: %w", err))
	}
	h, err := libp2p.New(
		libp2p.Identity(priv),
		libp2p.ResourceManager(rm),
		libp2p.ListenAddrStrings(strings.Split(*listen, ",")...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.UserAgent(agentVersion()),
		libp2p.ProtocolVersion("ipfs/0.1.0"),
	)
	if err != nil {
		fatal(fmt.Errorf("host: %w", err))
	}

	n := &node{h: h, priv: priv, selfStr: h.ID().String(), idInfo: map[peer.ID]identifyInfo{}}
	if withIDs, ok := h.(interface{ IDService() identify.IDService }); ok {
		n.idSvc = withIDs.IDService()
	}

	// Subscribe before anybody can connect, so no identify result is missed.
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		fatal(fmt.Errorf("event bus: %w", err))
	}
	go n.collectIdentify(sub)

	// The /ipfs prefix makes go-libp2p-kad-dht insist on exactly the pk and
	// ipns validators at construction time, so the kadfast namespace is added
	// to the very same map right after New (before any peer knows about us).
	validator := record.NamespacedValidator{
		"pk":   record.PublicKeyValidator{},
		"ipns": ipns.Validator{KeyBook: h.Peerstore()},
	}
	valueDS := dssync.MutexWrap(ds.NewMapDatastore())
	passAll := func(addrs []ma.Multiaddr) []ma.Multiaddr { return addrs }
	mode := dht.ModeServer
	if *client {
		mode = dht.ModeClient
	}
	kad, err := dht.New(h,
		dht.Mode(mode),
		dht.Validator(validator),
		dht.ValueDatastore(valueDS),
		dht.AddressFilter(passAll),
		dht.QueryFilter(func(_ any, ai peer.AddrInfo) bool { return len(ai.Addrs) > 0 }),
		dht.RoutingTableFilter(func(any, peer.ID) bool { return true }),
		// last: sees the config as the options above left it (see load.go)
		grabSenderBuilder,
	)
	if err != nil {
		fatal(fmt.Errorf("dht: %w", err))
	}
	validator[recordNS] = anyValueValidator{}
	n.kad = kad
	// Our own view of the DHT's value datastore, used to store a record
	// locally before sending it out (the quorum-counting put below).
	n.values = records.NewValueStore(valueDS, validator, 0)
	n.msgr, err = dhtpb.NewProtocolMessenger(kad.MessageSender())
	if err != nil {
		fatal(fmt.Errorf("messenger: %w", err))
	}

	h.SetStreamHandler(jsonProtocol, n.serveJSON)

	addrs := []string{}
	for _, a := range h.Addrs() {
		addrs = append(addrs, a.String())
	}
	if len(addrs) == 0 {
		for _, a := range h.Network().ListenAddresses() {
			addrs = append(addrs, a.String())
		}
	}
	emit(map[string]any{"event": "ready", "impl": implName, "peer_id": n.selfStr, "addrs": addrs})

	done := make(chan struct{})
	var stopOnce sync.Once
	shutdown := func() {
		stopOnce.Do(func() {
			closed := make(chan struct{})
			go func() {
				_ = kad.Close()
				_ = h.Close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(3 * time.Second):
				logf("shutdown took too long; exiting anyway")
			}
			close(done)
		})
	}

	go func() {
		rd := bufio.NewReaderSize(os.Stdin, 1<<20)
		for {
			line, err := rd.ReadBytes('\n')
			if len(line) > 0 {
				n.dispatch(line, shutdown)
			}
			if err != nil {
				break
			}
		}
		logf("stdin closed, exiting")
		shutdown()
	}()

	<-done
	os.Exit(0)
}

// ---------------------------------------------------------------- dispatch

func (n *node) dispatch(line []byte, shutdown func()) {
	trimmed := false
	for _, c := range line {
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			trimmed = true
			break
		}
	}
	if !trimmed {
		return
	}
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		logf("bad request line: %v", err)
		emit(map[string]any{"id": nil, "ok": false, "error": "bad request: " + err.Error()})
		return
	}
	id := req.ID
	if len(id) == 0 {
		id = json.RawMessage("null")
	}

	timeout := defaultTimeout
	if req.Timeout != nil && *req.Timeout > 0 {
		timeout = time.Duration(*req.Timeout * float64(time.Second))
	}

	if req.Cmd == "stop" {
		emit(map[string]any{"id": id, "ok": true, "result": map[string]any{}})
		go shutdown()
		return
	}

	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()

		type outcome struct {
			res any
			err error
		}
		ch := make(chan outcome, 1)
		go func() {
			defer func() {
				if r := recover(); r != nil {
					ch <- outcome{nil, fmt.Errorf("panic: %v", r)}
				}
			}()
			res, err := n.handle(ctx, &req)
			ch <- outcome{res, err}
		}()

		var out outcome
		select {
		case out = <-ch:
		case <-ctx.Done():
			// A library call ignored its context: answer anyway, in time.
			select {
			case out = <-ch:
			case <-time.After(50 * time.Millisecond):
				out = outcome{nil, fmt.Errorf("timeout after %s", timeout)}
			}
		}
		if out.err != nil {
			emit(map[string]any{"id": id, "ok": false, "error": out.err.Error()})
			return
		}
		if out.res == nil {
			out.res = map[string]any{}
		}
		emit(map[string]any{"id": id, "ok": true, "result": out.res})
	}()
}

func (n *node) handle(ctx context.Context, req *request) (any, error) {
	switch req.Cmd {
	case "connect_only":
		return n.cmdConnectOnly(ctx, req)
	case "dial":
		return n.cmdDial(ctx, req)
	case "bootstrap":
		return n.cmdBootstrap(ctx)
	case "put":
		return n.cmdPut(ctx, req)
	case "get":
		return n.cmdGet(ctx, req)
	case "provide":
		return n.cmdProvide(ctx, req)
	case "providers":
		return n.cmdProviders(ctx, req)
	case "find_peer":
		return n.cmdFindPeer(ctx, req)
	case "closest":
		return n.cmdClosest(ctx, req)
	case "ping":
		return n.cmdPing(ctx, req)
	case "identify":
		return n.cmdIdentify(ctx, req)
	case "request":
		return n.cmdRequest(ctx, req)
	case "kad_fill":
		return n.cmdKadFill(req)
	case "ipns_record":
		return n.cmdIpnsRecord(req)
	case "routing_table":
		return map[string]any{"peers": idStrings(n.kad.RoutingTable().ListPeers())}, nil
	case "connected":
		return map[string]any{"peers": idStrings(n.h.Network().Peers())}, nil
	case "cancel_requests":
		return n.cmdCancelRequests(ctx, req)
	case "kad_load":
		return n.cmdKadLoad(ctx, req)
	default:
		return nil, fmt.Errorf("unsupported: %s", req.Cmd)
	}
}

// ---------------------------------------------------------------- helpers

func idStrings(ids []peer.ID) []string {
	out := make([]string, 0, len(ids))
	for _, p := range ids {
		out = append(out, p.String())
	}
	return out
}

func addrStrings(addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

func requireKey(req *request) (string, error) {
	if req.KeyB64 != nil {
		key, err := base64.StdEncoding.DecodeString(*req.KeyB64)
		if err != nil {
			return "", fmt.Errorf("key_b64: %w", err)
		}
		return string(key), nil
	}
	if req.Key == nil {
		return "", errors.New("missing argument: key")
	}
	return *req.Key, nil
}

func providerCID(text string) (cid.Cid, error) {
	mh, err := multihash.Sum([]byte(text), multihash.SHA2_256, -1)
	if err != nil {
		return cid.Undef, err
	}
	return cid.NewCidV1(cid.Raw, mh), nil
}

func parsePeer(s string) (peer.ID, error) {
	if s == "" {
		return "", errors.New("missing argument: peer_id")
	}
	return peer.Decode(s)
}

// ensureConn makes sure we have a connection to p and returns one.
func (n *node) ensureConn(ctx context.Context, p peer.ID) (network.Conn, error) {
	if conns := n.h.Network().ConnsToPeer(p); len(conns) > 0 {
		return conns[0], nil
	}
	if err := n.h.Connect(ctx, peer.AddrInfo{ID: p}); err != nil {
		return nil, err
	}
	conns := n.h.Network().ConnsToPeer(p)
	if len(conns) == 0 {
		return nil, errors.New("connected but no connection found")
	}
	return conns[0], nil
}

func (n *node) waitIdentify(ctx context.Context, c network.Conn) error {
	if n.idSvc == nil {
		return errors.New("identify service not available")
	}
	select {
	case <-n.idSvc.IdentifyWait(c):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *node) supportsKad(p peer.ID) bool {
	protos, err := n.h.Peerstore().SupportsProtocols(p, kadProtocol)
	return err == nil && len(protos) > 0
}

// ---------------------------------------------------------------- identify bookkeeping

func (n *node) collectIdentify(sub event.Subscription) {
	for ev := range sub.Out() {
		e, ok := ev.(event.EvtPeerIdentificationCompleted)
		if !ok {
			continue
		}
		info := identifyInfo{
			agentVersion:    e.AgentVersion,
			protocolVersion: e.ProtocolVersion,
			listenAddrs:     addrStrings(e.ListenAddrs),
			protocols:       make([]string, 0, len(e.Protocols)),
		}
		for _, p := range e.Protocols {
			info.protocols = append(info.protocols, string(p))
		}
		if e.ObservedAddr != nil {
			info.observedAddr = e.ObservedAddr.String()
		}
		n.idMu.Lock()
		n.idInfo[e.Peer] = info
		n.idMu.Unlock()
	}
}

// ---------------------------------------------------------------- commands

// parseP2pAddr: the peer of a command's `addr` argument, which must be a
// multiaddr ending in /p2p/<id> of a peer other than this one; verb names
// the command in the error ("cannot dial self").
func (n *node) parseP2pAddr(addr, verb string) (*peer.AddrInfo, error) {
	if addr == "" {
		return nil, errors.New("missing argument: addr")
	}
	maddr, err := ma.NewMultiaddr(addr)
	if err != nil {
		return nil, fmt.Errorf("bad multiaddr: %w", err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(maddr)
	if err != nil {
		return nil, fmt.Errorf("addr must end in /p2p/<id>: %w", err)
	}
	if ai.ID == n.h.ID() {
		return nil, fmt.Errorf("cannot %s self", verb)
	}
	return ai, nil
}

// cmdConnectOnly: a connection to the peer of `addr` through the transport's
// own handshake only (for QUIC: TLS with both certificates checked), with no
// wait for identify; the connection's remote address.
func (n *node) cmdConnectOnly(ctx context.Context, req *request) (any, error) {
	ai, err := n.parseP2pAddr(req.Addr, "connect to")
	if err != nil {
		return nil, err
	}
	n.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
	c, err := n.h.Network().DialPeer(ctx, ai.ID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"peer_id": c.RemotePeer().String(), "remote_addr": c.RemoteMultiaddr().String()}, nil
}

func (n *node) cmdDial(ctx context.Context, req *request) (any, error) {
	ai, err := n.parseP2pAddr(req.Addr, "dial")
	if err != nil {
		return nil, err
	}
	n.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
	if err := n.h.Connect(ctx, *ai); err != nil {
		return nil, err
	}
	conns := n.h.Network().ConnsToPeer(ai.ID)
	if len(conns) == 0 {
		return nil, errors.New("connection closed right after dialing")
	}
	if err := n.waitIdentify(ctx, conns[0]); err != nil {
		return nil, fmt.Errorf("waiting for identify: %w", err)
	}
	if n.supportsKad(ai.ID) {
		if _, err := n.kad.RoutingTable().TryAddPeer(ai.ID, true, true); err != nil {
			logf("dial: routing table refused %s: %v", ai.ID, err)
		}
	} else {
		logf("dial: %s does not announce %s; not added to the routing table", ai.ID, kadProtocol)
	}
	return map[string]any{"peer_id": ai.ID.String()}, nil
}

// fillAddr is the made-up address of the i-th kad_fill peer: a loopback
// address on port 1, where nothing listens (a dial is refused at once).
func fillAddr(i int) ma.Multiaddr {
	return ma.StringCast(fmt.Sprintf("/ip4/127.%d.%d.%d/tcp/1", 1+(i>>16)%254, (i>>8)&255, i&255))
}

// fillKey is the identity of the i-th kad_fill peer: random, or derived from seed.
func fillKey(seed *uint64, i int) (crypto.PrivKey, error) {
	if seed == nil {
		priv, _, err := crypto.GenerateEd25519Key(nil)
		return priv, err
	}
	secret := sha256.Sum256([]byte(fmt.Sprintf("kadfast-interop-fill-%d-%d", *seed, i)))
	return crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(secret[:]))
}

// cmdKadFill puts `count` made-up peers into the routing table as if we had
// met them: a permanent address in the peerstore (FIND_NODE replies take
// addresses from there) and TryAddPeer, which never dials. A peer whose
// bucket is full is left out (TryAddPeer refuses it: nothing replaceable).
// The DHT's own upkeep that would dial them (the routing-table refresh with
// its liveness pings) runs every 10 minutes, not before.
func (n *node) cmdKadFill(req *request) (any, error) {
	if req.Count == nil || *req.Count < 0 {
		return nil, errors.New("missing argument: count")
	}
	rt := n.kad.RoutingTable()
	ps := n.h.Peerstore()
	for i := 0; i < *req.Count; i++ {
		priv, err := fillKey(req.Seed, i)
		if err != nil {
			return nil, err
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			return nil, err
		}
		if !rt.UsefulNewPeer(id) {
			continue
		}
		ps.AddAddrs(id, []ma.Multiaddr{fillAddr(i)}, peerstore.PermanentAddrTTL)
		if added, _ := rt.TryAddPeer(id, true, false); !added {
			ps.ClearAddrs(id)
		}
	}
	return map[string]any{"routing_table": rt.Size()}, nil
}

func (n *node) cmdBootstrap(ctx context.Context) (any, error) {
	if n.kad.RoutingTable().Size() == 0 {
		return nil, errors.New("routing table is empty")
	}
	select {
	case err := <-n.kad.ForceRefresh():
		if err != nil {
			return nil, err
		}
		return map[string]any{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cmdPut stores the record locally and sends PUT_VALUE to the closest peers,
// counting acknowledgements (IpfsDHT.PutValue does not report them).
func (n *node) cmdPut(ctx context.Context, req *request) (any, error) {
	key, err := requireKey(req)
	if err != nil {
		return nil, err
	}
	quorum := 1
	if req.Quorum != nil {
		quorum = *req.Quorum
	}
	if quorum > n.kad.BucketSize() {
		quorum = n.kad.BucketSize()
	}
	value := []byte(req.Value)
	if req.ValueB64 != nil {
		if value, err = base64.StdEncoding.DecodeString(*req.ValueB64); err != nil {
			return nil, fmt.Errorf("value_b64: %w", err)
		}
	}
	rec := record.MakePutRecord(key, value)
	if err := n.values.Put(ctx, key, rec); err != nil {
		return nil, fmt.Errorf("local store: %w", err)
	}
	peers, err := n.kad.GetClosestPeers(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("closest peers: %w", err)
	}
	// The sends outlive this call once the quorum is met, so they run on a
	// context that keeps the deadline but not the cancellation.
	sendCtx, sendCancel := context.WithTimeout(context.WithoutCancel(ctx), defaultTimeout)
	if dl, ok := ctx.Deadline(); ok {
		sendCtx, sendCancel = context.WithDeadline(context.WithoutCancel(ctx), dl)
	}
	var sends sync.WaitGroup
	acks := make(chan error, len(peers))
	for _, p := range peers {
		sends.Add(1)
		go func(p peer.ID) {
			defer sends.Done()
			acks <- n.msgr.PutValue(sendCtx, p, rec)
		}(p)
	}
	go func() { sends.Wait(); sendCancel() }()
	if quorum <= 0 {
		return map[string]any{}, nil
	}
	okCount, failCount := 0, 0
	var lastErr error
	for okCount < quorum && okCount+failCount < len(peers) {
		select {
		case err := <-acks:
			if err == nil {
				okCount++
			} else {
				failCount++
				lastErr = err
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("quorum %d not met: %d acks before timeout", quorum, okCount)
		}
	}
	if okCount < quorum {
		msg := fmt.Sprintf("quorum %d not met: %d of %d peers acknowledged", quorum, okCount, len(peers))
		if lastErr != nil {
			msg += " (last error: " + lastErr.Error() + ")"
		}
		return nil, errors.New(msg)
	}
	return map[string]any{}, nil
}

func (n *node) cmdGet(ctx context.Context, req *request) (any, error) {
	key, err := requireKey(req)
	if err != nil {
		return nil, err
	}
	val, err := n.kad.GetValue(ctx, key, dht.Quorum(1))
	if err != nil {
		return nil, err
	}
	return map[string]any{"value": string(val), "value_b64": base64.StdEncoding.EncodeToString(val)}, nil
}

// cmdIpnsRecord makes an IPNS record of our own name with boxo's ipns package.
func (n *node) cmdIpnsRecord(req *request) (any, error) {
	if req.Value == "" {
		return nil, errors.New("missing argument: value")
	}
	value, err := path.NewPath(req.Value)
	if err != nil {
		return nil, fmt.Errorf("value: %w", err)
	}
	var seq uint64
	if req.Seq != nil {
		seq = *req.Seq
	}
	eolSeconds := 3600.0
	if req.EOLSeconds != nil {
		eolSeconds = *req.EOLSeconds
	}
	v1 := true
	if req.V1 != nil {
		v1 = *req.V1
	}
	eol := time.Now().Add(time.Duration(eolSeconds * float64(time.Second)))
	rec, err := ipns.NewRecord(n.priv, value, seq, eol, ipns.DefaultRecordTTL, ipns.WithV1Compatibility(v1))
	if err != nil {
		return nil, err
	}
	raw, err := ipns.MarshalRecord(rec)
	if err != nil {
		return nil, err
	}
	name := ipns.NameFromPeer(n.h.ID())
	return map[string]any{
		"name":       n.selfStr,
		"key_b64":    base64.StdEncoding.EncodeToString(name.RoutingKey()),
		"record_b64": base64.StdEncoding.EncodeToString(raw),
	}, nil
}

func (n *node) cmdProvide(ctx context.Context, req *request) (any, error) {
	key, err := requireKey(req)
	if err != nil {
		return nil, err
	}
	c, err := providerCID(key)
	if err != nil {
		return nil, err
	}
	if err := n.kad.Provide(ctx, c, true); err != nil {
		return nil, err
	}
	return map[string]any{}, nil
}

func (n *node) cmdProviders(ctx context.Context, req *request) (any, error) {
	key, err := requireKey(req)
	if err != nil {
		return nil, err
	}
	count := 1
	if req.Count != nil && *req.Count > 0 {
		count = *req.Count
	}
	c, err := providerCID(key)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	found := []string{}
	addrs := map[string][]string{}
	seen := map[peer.ID]bool{}
	for ai := range n.kad.FindProvidersAsync(qctx, c, count) {
		if seen[ai.ID] {
			continue
		}
		seen[ai.ID] = true
		found = append(found, ai.ID.String())
		addrs[ai.ID.String()] = addrStrings(ai.Addrs)
		if len(found) >= count {
			break
		}
	}
	return map[string]any{"providers": found, "addrs": addrs}, nil
}

func (n *node) cmdFindPeer(ctx context.Context, req *request) (any, error) {
	p, err := parsePeer(req.PeerID)
	if err != nil {
		return nil, err
	}
	ai, err := n.kad.FindPeer(ctx, p)
	if err != nil {
		return nil, err
	}
	return map[string]any{"peer_id": ai.ID.String(), "addrs": addrStrings(ai.Addrs)}, nil
}

func (n *node) cmdClosest(ctx context.Context, req *request) (any, error) {
	var target string
	switch {
	case req.PeerID != "":
		p, err := parsePeer(req.PeerID)
		if err != nil {
			return nil, err
		}
		target = string(p)
	case req.Key != nil:
		target = *req.Key
	default:
		return nil, errors.New("missing argument: key or peer_id")
	}
	peers, err := n.kad.GetClosestPeers(ctx, target)
	if err != nil {
		return nil, err
	}
	return map[string]any{"peers": idStrings(peers)}, nil
}

func (n *node) cmdPing(ctx context.Context, req *request) (any, error) {
	p, err := parsePeer(req.PeerID)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	select {
	case res, ok := <-ping.Ping(pctx, n.h, p):
		if !ok {
			return nil, errors.New("ping ended without a result")
		}
		if res.Error != nil {
			return nil, res.Error
		}
		return map[string]any{"rtt_ms": float64(res.RTT.Microseconds()) / 1000.0}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (n *node) cmdIdentify(ctx context.Context, req *request) (any, error) {
	p, err := parsePeer(req.PeerID)
	if err != nil {
		return nil, err
	}
	c, err := n.ensureConn(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := n.waitIdentify(ctx, c); err != nil {
		return nil, fmt.Errorf("waiting for identify: %w", err)
	}
	// The completion event is delivered asynchronously; give it a moment.
	deadline := time.Now().Add(time.Second)
	for {
		n.idMu.Lock()
		info, ok := n.idInfo[p]
		n.idMu.Unlock()
		if ok {
			return map[string]any{
				"protocols":        info.protocols,
				"agent_version":    info.agentVersion,
				"protocol_version": info.protocolVersion,
				"listen_addrs":     info.listenAddrs,
				"observed_addr":    info.observedAddr,
			}, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Fall back to what identify left in the peerstore.
	ps := n.h.Peerstore()
	protos, _ := ps.GetProtocols(p)
	if len(protos) == 0 {
		return nil, errors.New("identify did not complete")
	}
	ps2 := make([]string, 0, len(protos))
	for _, pr := range protos {
		ps2 = append(ps2, string(pr))
	}
	av, _ := ps.Get(p, "AgentVersion")
	pv, _ := ps.Get(p, "ProtocolVersion")
	avs, _ := av.(string)
	pvs, _ := pv.(string)
	return map[string]any{
		"protocols":        ps2,
		"agent_version":    avs,
		"protocol_version": pvs,
		"listen_addrs":     addrStrings(ps.Addrs(p)),
		"observed_addr":    "",
	}, nil
}

func (n *node) cmdRequest(ctx context.Context, req *request) (any, error) {
	p, err := parsePeer(req.PeerID)
	if err != nil {
		return nil, err
	}
	body := req.Body
	if len(body) == 0 {
		body = json.RawMessage("null")
	}
	s, err := n.openJSONStream(ctx, p)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := s.Write(body); err != nil {
		s.Reset()
		return nil, fmt.Errorf("write: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return nil, fmt.Errorf("close write: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(s, maxJSONBody+1))
	if err != nil {
		s.Reset()
		return nil, fmt.Errorf("read: %w", err)
	}
	if len(data) > maxJSONBody {
		s.Reset()
		return nil, errors.New("response too large")
	}
	var resp json.RawMessage
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("response is not JSON: %w", err)
	}
	return map[string]any{"response": resp}, nil
}

// openJSONStream opens a /kadfast/json/1.0.0 stream to p.
//
// host.NewStream negotiates lazily once identify has shown that p speaks the
// protocol: the multistream proposal, the request and our half-close then
// leave in one burst. js-libp2p 3.x (multistream-select 7.x) loses a
// half-close that arrives before it answered the proposal, so its handler
// never sees the end of the request. By default we therefore negotiate
// eagerly (wait for the echo, then write). KADFAST_GO_LAZY_REQUEST=1 keeps
// go-libp2p's own lazy behaviour, e.g. to check that a listener copes with it.
func (n *node) openJSONStream(ctx context.Context, p peer.ID) (network.Stream, error) {
	if os.Getenv("KADFAST_GO_LAZY_REQUEST") == "1" {
		return n.h.NewStream(ctx, p, jsonProtocol)
	}
	if _, err := n.ensureConn(ctx, p); err != nil {
		return nil, err
	}
	s, err := n.h.Network().NewStream(ctx, p)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := msmux.SelectProtoOrFail(jsonProtocol, s); err != nil {
		s.Reset()
		return nil, fmt.Errorf("negotiating %s: %w", jsonProtocol, err)
	}
	if err := s.SetProtocol(jsonProtocol); err != nil {
		s.Reset()
		return nil, err
	}
	return s, nil
}

// serveJSON answers one /kadfast/json/1.0.0 request by echoing it.
func (n *node) serveJSON(s network.Stream) {
	_ = s.SetDeadline(time.Now().Add(defaultTimeout))
	data, err := io.ReadAll(io.LimitReader(s, maxJSONBody+1))
	if err != nil || len(data) > maxJSONBody {
		logf("json request from %s: read failed: %v", s.Conn().RemotePeer(), err)
		s.Reset()
		return
	}
	var body json.RawMessage
	if err := json.Unmarshal(data, &body); err != nil {
		logf("json request from %s: not JSON: %v", s.Conn().RemotePeer(), err)
		s.Reset()
		return
	}
	out, err := json.Marshal(map[string]any{"echo": body, "peer_id": n.selfStr, "impl": implName})
	if err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(out); err != nil {
		s.Reset()
		return
	}
	_ = s.Close()
}

// ---------------------------------------------------------------- cancel_requests

// cancelSettle is how long, after each reset and the ping behind it, we wait
// for the connection's close notification; cancelProbeTimeout bounds one
// ping. Both are bounded by the command's own timeout.
const (
	cancelSettle       = 20 * time.Millisecond
	cancelProbeTimeout = 5 * time.Second
)

// cmdCancelRequests does what go-libp2p-kad-dht does with a request it no
// longer wants, `count` times: open a kad stream with host.NewStream (lazy
// multistream: the protocol proposal leaves together with the first write),
// write one framed FIND_NODE, and reset the stream at once, without reading.
// After each reset a ping on a fresh stream of the same connection makes sure
// the peer has read the reset (bytes of one connection arrive in order), then
// we wait briefly for the connection's close notification. `kept` counts the
// iterations after which that connection was still open; `conns` is the
// number of connections to the peer at the end.
func (n *node) cmdCancelRequests(ctx context.Context, req *request) (any, error) {
	p, err := parsePeer(req.PeerID)
	if err != nil {
		return nil, err
	}
	count := 40
	if req.Count != nil {
		count = *req.Count
	}
	c, err := n.ensureConn(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := n.waitIdentify(ctx, c); err != nil {
		return nil, fmt.Errorf("waiting for identify: %w", err)
	}
	if !n.supportsKad(p) {
		// host.NewStream negotiates lazily only for a protocol the peer announced
		return nil, fmt.Errorf("%s does not announce %s", p, kadProtocol)
	}
	closed := make(chan string, 4*count+16) // IDs of closed connections to p
	notifee := &network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) {
		if c.RemotePeer() == p {
			select {
			case closed <- c.ID():
			default:
			}
		}
	}}
	n.h.Network().Notify(notifee)
	defer n.h.Network().StopNotify(notifee)
	gone := map[string]bool{}
	drain := func(wait time.Duration) {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		for {
			select {
			case id := <-closed:
				gone[id] = true
			case <-timer.C:
				return
			case <-ctx.Done():
				return
			}
		}
	}
	kept := 0
	lastErr := ""
	for i := 0; i < count; i++ {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("after %d of %d: %w", i, count, ctx.Err())
		}
		s, err := n.h.NewStream(ctx, p, kadProtocol)
		if err != nil {
			lastErr = fmt.Sprintf("iteration %d: new stream: %v", i, err)
			drain(cancelSettle)
			continue
		}
		conn := s.Conn()
		// the key: a random Ed25519 PeerId, as go's own lookups ask for
		key := append([]byte{0x00, 0x24, 0x08, 0x01, 0x12, 0x20}, make([]byte, 32)...)
		_, _ = rand.Read(key[6:])
		body, err := proto.Marshal(dhtpb.NewMessage(dhtpb.Message_FIND_NODE, key, 0))
		if err != nil {
			s.Reset()
			return nil, err
		}
		framed := binary.AppendUvarint(make([]byte, 0, len(body)+binary.MaxVarintLen64), uint64(len(body)))
		framed = append(framed, body...)
		_, werr := s.Write(framed)
		s.Reset()
		if werr != nil {
			lastErr = fmt.Sprintf("iteration %d: write: %v", i, werr)
		} else if perr := n.pingOn(ctx, conn); perr != nil {
			lastErr = fmt.Sprintf("iteration %d: ping after the reset: %v", i, perr)
		}
		drain(cancelSettle)
		if werr != nil || gone[conn.ID()] || conn.IsClosed() || !n.hasConn(p, conn.ID()) {
			continue
		}
		kept++
	}
	drain(cancelSettle)
	out := map[string]any{"kept": kept, "conns": len(n.h.Network().ConnsToPeer(p))}
	if lastErr != "" {
		out["last_error"] = lastErr
	}
	return out, nil
}

func (n *node) hasConn(p peer.ID, id string) bool {
	for _, c := range n.h.Network().ConnsToPeer(p) {
		if c.ID() == id && !c.IsClosed() {
			return true
		}
	}
	return false
}

// pingOn does one /ipfs/ping/1.0.0 round trip on a new stream of conn.
func (n *node) pingOn(ctx context.Context, conn network.Conn) error {
	pctx, cancel := context.WithTimeout(ctx, cancelProbeTimeout)
	defer cancel()
	s, err := conn.NewStream(pctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if dl, ok := pctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := msmux.SelectProtoOrFail(ping.ID, s); err != nil {
		s.Reset()
		return fmt.Errorf("negotiating %s: %w", ping.ID, err)
	}
	payload := make([]byte, ping.PingSize)
	_, _ = rand.Read(payload)
	if _, err := s.Write(payload); err != nil {
		s.Reset()
		return err
	}
	echo := make([]byte, ping.PingSize)
	if _, err := io.ReadFull(s, echo); err != nil {
		s.Reset()
		return err
	}
	if string(echo) != string(payload) {
		s.Reset()
		return errors.New("ping echo differs")
	}
	return nil
}
