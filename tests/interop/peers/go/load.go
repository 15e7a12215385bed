// kad_load: a FIND_NODE load generator against one Kademlia server (see
// ../PROTOCOL.md). The benchmark that drives it measures the server's CPU
// per request, so the client side stays lean: the requests are built (and,
// for `new`, framed) once, nothing is logged per request, and of the
// replies `new` decodes only a worker's first one.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"
)

const (
	loadPoolSize       = 256
	loadMaxInflight    = 256
	loadRequestTimeout = 10 * time.Second
	// outbound kad streams to one peer the resource manager allows (see resourceManager)
	loadMaxStreams = 1024
)

// resourceManager is go-libp2p's default one (libp2p.DefaultResourceManager:
// the default limits with the default service limits, scaled to this
// machine), but for the outbound /ipfs/kad/1.0.0 streams to one peer: the
// default (128 + 8 per GiB of an eighth of the memory) is below the streams
// of a kad_load with up to 256 workers. Inbound limits stay the defaults.
func resourceManager() (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	partial := rcmgr.PartialLimitConfig{
		ProtocolPeer: map[protocol.ID]rcmgr.ResourceLimits{
			kadProtocol: {StreamsOutbound: loadMaxStreams, Streams: 2 * loadMaxStreams},
		},
	}
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(partial.Build(limits.AutoScale())))
}

// senderBuilder is the constructor go-libp2p-kad-dht builds its message
// sender with: by default net.NewMessageSenderImpl, from the module's
// internal/net package, which Go's internal-package rule keeps us from
// importing. The DHT's config (an internal type as well) holds that
// constructor in the exported field MsgSenderBuilder, and dht.New applies
// the options given to it after the defaults; grabSenderBuilder, one of
// those options, reads the field by reflection. So the `reused` workers run
// the library's own message sender, not a copy of it.
var (
	senderBuilder     func(host.Host, []protocol.ID) dhtpb.MessageSenderWithDisconnect
	senderBuilderName string
)

// grabSenderBuilder is a dht.Option (C is go-libp2p-kad-dht's internal
// config type, inferred where the option is passed) that records the
// config's MsgSenderBuilder and changes nothing.
func grabSenderBuilder[C any](c *C) error {
	v := reflect.ValueOf(c).Elem()
	if v.Kind() != reflect.Struct {
		return nil
	}
	f := v.FieldByName("MsgSenderBuilder")
	if !f.IsValid() || !f.CanInterface() || f.IsNil() {
		return nil
	}
	if b, ok := f.Interface().(func(host.Host, []protocol.ID) dhtpb.MessageSenderWithDisconnect); ok {
		senderBuilder = b
		if fn := runtime.FuncForPC(f.Pointer()); fn != nil {
			senderBuilderName = fn.Name()
		}
	}
	return nil
}

// loadKey is the identity whose PeerId is the i-th request's key: random,
// or with a seed the one whose Ed25519 secret key is
// sha256("kadfast-interop-load-<seed>-<i>") (as the rust peer does).
func loadKey(seed *uint64, i int) (crypto.PrivKey, error) {
	if seed == nil {
		priv, _, err := crypto.GenerateEd25519Key(nil)
		return priv, err
	}
	secret := sha256.Sum256([]byte(fmt.Sprintf("kadfast-interop-load-%d-%d", *seed, i)))
	return crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(secret[:]))
}

// loadStats is what one worker (or, merged, the whole command) measured.
type loadStats struct {
	latencies    []float64 // milliseconds, one per answered request
	errors       int
	firstErr     string
	firstErrAt   time.Time
	firstReplyAt time.Time // zero until a reply came
	closerPeers  int       // in the first reply
	firstStart   time.Time // of the answered requests: the earliest start
	lastReply    time.Time
}

// answered records a request started at t0 and answered at t1; closer is
// asked for the reply's closer peers only for the first reply.
func (st *loadStats) answered(t0, t1 time.Time, closer func() int) {
	st.latencies = append(st.latencies, float64(t1.Sub(t0).Nanoseconds())/1e6)
	if st.firstStart.IsZero() || t0.Before(st.firstStart) {
		st.firstStart = t0
	}
	if t1.After(st.lastReply) {
		st.lastReply = t1
	}
	if st.firstReplyAt.IsZero() {
		st.firstReplyAt = t1
		st.closerPeers = closer()
	}
}

func (st *loadStats) failed(err error) {
	st.errors++
	if st.firstErr == "" {
		st.firstErr = err.Error()
		st.firstErrAt = time.Now()
	}
}

func (st *loadStats) merge(o *loadStats) {
	st.latencies = append(st.latencies, o.latencies...)
	st.errors += o.errors
	if o.firstErr != "" && (st.firstErr == "" || o.firstErrAt.Before(st.firstErrAt)) {
		st.firstErr, st.firstErrAt = o.firstErr, o.firstErrAt
	}
	if !o.firstReplyAt.IsZero() && (st.firstReplyAt.IsZero() || o.firstReplyAt.Before(st.firstReplyAt)) {
		st.firstReplyAt, st.closerPeers = o.firstReplyAt, o.closerPeers
	}
	if !o.firstStart.IsZero() && (st.firstStart.IsZero() || o.firstStart.Before(st.firstStart)) {
		st.firstStart = o.firstStart
	}
	if o.lastReply.After(st.lastReply) {
		st.lastReply = o.lastReply
	}
}

func (st *loadStats) result() (any, error) {
	n := len(st.latencies)
	if n == 0 {
		why := st.firstErr
		if why == "" {
			why = "no request was sent"
		}
		return nil, fmt.Errorf("kad_load: no request answered (%d failed): %s", st.errors, why)
	}
	slices.Sort(st.latencies)
	// nearest rank: the smallest value with at least p% of all at or below it
	rank := func(p float64) float64 {
		r := int(math.Ceil(p / 100 * float64(n)))
		return st.latencies[min(max(r, 1), n)-1]
	}
	sum := 0.0
	for _, l := range st.latencies {
		sum += l
	}
	out := map[string]any{
		"requests":     n,
		"elapsed":      st.lastReply.Sub(st.firstStart).Seconds(),
		"p50_ms":       rank(50),
		"p99_ms":       rank(99),
		"mean_ms":      sum / float64(n),
		"errors":       st.errors,
		"closer_peers": st.closerPeers,
	}
	if st.errors > 0 {
		out["error"] = st.firstErr
	}
	return out, nil
}

// cmdKadLoad: `inflight` workers send FIND_NODE requests to the server at
// `addr` for `duration` seconds, on streams of one connection to it.
func (n *node) cmdKadLoad(ctx context.Context, req *request) (any, error) {
	ai, err := n.parseP2pAddr(req.Addr, "load")
	if err != nil {
		return nil, err
	}
	reused := false
	switch req.Mode {
	case "new":
	case "reused":
		reused = true
		if senderBuilder == nil {
			return nil, errors.New("kad_load: go-libp2p-kad-dht's message sender constructor was not found in its config")
		}
	default:
		return nil, fmt.Errorf("kad_load: mode must be \"new\" or \"reused\", not %q", req.Mode)
	}
	inflight := 1
	if req.Inflight != nil {
		inflight = *req.Inflight
	}
	if inflight < 1 || inflight > loadMaxInflight {
		return nil, fmt.Errorf("kad_load: inflight must be 1..%d", loadMaxInflight)
	}
	if req.Duration == nil || math.IsNaN(*req.Duration) || math.IsInf(*req.Duration, 0) || *req.Duration < 0 {
		return nil, errors.New("kad_load: duration (seconds) missing or invalid")
	}
	duration := time.Duration(*req.Duration * float64(time.Second))

	// The requests: FIND_NODE for the PeerId bytes of random keys, as
	// dhtpb.ProtocolMessenger.GetClosestPeers builds them (NewMessage with
	// cluster level 0, which sets clusterLevelRaw = 1).
	msgs := make([]*dhtpb.Message, loadPoolSize)
	frames := make([][]byte, loadPoolSize)
	for i := range msgs {
		priv, err := loadKey(req.Seed, i)
		if err != nil {
			return nil, err
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			return nil, err
		}
		msgs[i] = dhtpb.NewMessage(dhtpb.Message_FIND_NODE, []byte(id), 0)
		body, err := proto.Marshal(msgs[i])
		if err != nil {
			return nil, err
		}
		frame := binary.AppendUvarint(make([]byte, 0, len(body)+binary.MaxVarintLen64), uint64(len(body)))
		frames[i] = append(frame, body...)
	}

	// One connection, kept for later loads; identify must be done, so that
	// host.NewStream negotiates lazily, as it does for every peer go's DHT
	// queries (the protocol proposal leaves with the request).
	if len(n.h.Network().ConnsToPeer(ai.ID)) == 0 {
		n.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
		if err := n.h.Connect(ctx, *ai); err != nil {
			return nil, fmt.Errorf("kad_load: cannot reach the server: %w", err)
		}
	}
	conn, err := n.ensureConn(ctx, ai.ID)
	if err != nil {
		return nil, fmt.Errorf("kad_load: cannot reach the server: %w", err)
	}
	if err := n.waitIdentify(ctx, conn); err != nil {
		return nil, fmt.Errorf("kad_load: waiting for identify: %w", err)
	}
	if reused {
		logf("kad_load: reused streams through %s", senderBuilderName)
	}

	end := time.Now().Add(duration)
	var next atomic.Uint64
	stats := make([]loadStats, inflight)
	var wg sync.WaitGroup
	for w := range inflight {
		wg.Add(1)
		go func(st *loadStats) {
			defer wg.Done()
			if reused {
				n.loadReused(ctx, ai.ID, msgs, &next, end, st)
			} else {
				n.loadNew(ctx, ai.ID, frames, &next, end, st)
			}
		}(&stats[w])
	}
	wg.Wait()
	var all loadStats
	for i := range stats {
		all.merge(&stats[i])
	}
	return all.result()
}

// loadNew: per request a new stream (host.NewStream), the framed request,
// one varint-framed reply read with go-msgio (as the DHT's message sender
// reads), then Close.
func (n *node) loadNew(ctx context.Context, p peer.ID, frames [][]byte, next *atomic.Uint64, end time.Time, st *loadStats) {
	for ctx.Err() == nil && time.Now().Before(end) {
		frame := frames[(next.Add(1)-1)%uint64(len(frames))]
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, loadRequestTimeout)
		s, err := n.h.NewStream(rctx, p, kadProtocol)
		cancel()
		if err != nil {
			st.failed(fmt.Errorf("new stream: %w", err))
			continue
		}
		deadline := t0.Add(loadRequestTimeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		_ = s.SetDeadline(deadline)
		if _, err := s.Write(frame); err != nil {
			s.Reset()
			st.failed(fmt.Errorf("write: %w", err))
			continue
		}
		r := msgio.NewVarintReaderSize(s, network.MessageSizeMax)
		reply, err := r.ReadMsg()
		t1 := time.Now()
		if err != nil {
			s.Reset()
			st.failed(fmt.Errorf("read: %w", err))
			continue
		}
		st.answered(t0, t1, func() int { return countCloser(reply) })
		r.ReleaseMsg(reply)
		_ = s.Close()
	}
}

// loadReused: a message sender of go-libp2p-kad-dht's own (senderBuilder)
// per worker, so each worker has its own stream, which the sender opens
// with the first request (host.NewStream, negotiated lazily) and keeps
// for the next ones (after a failure it opens a new one, and retries a
// request once, as it does for the DHT). SendRequest is what
// ProtocolMessenger.GetClosestPeers sends its messages with; called
// directly, the pooled message is not rebuilt and the reply's peers are
// not turned into AddrInfos. The sender decodes every reply into a
// dhtpb.Message (the DHT's client does the same) and gives up on a reply
// after 10 s. At the end the sender is told that the peer disconnected:
// its only way to let go of its stream, which it resets.
func (n *node) loadReused(ctx context.Context, p peer.ID, msgs []*dhtpb.Message, next *atomic.Uint64, end time.Time, st *loadStats) {
	sender := senderBuilder(n.h, []protocol.ID{kadProtocol})
	defer sender.OnDisconnect(context.Background(), p)
	for ctx.Err() == nil && time.Now().Before(end) {
		msg := msgs[(next.Add(1)-1)%uint64(len(msgs))]
		rctx, cancel := context.WithTimeout(ctx, loadRequestTimeout)
		t0 := time.Now()
		reply, err := sender.SendRequest(rctx, p, msg)
		t1 := time.Now()
		cancel()
		if err != nil {
			st.failed(err)
			continue
		}
		st.answered(t0, t1, func() int { return len(reply.GetCloserPeers()) })
	}
}

// countCloser is the number of closer peers in a marshalled kad message.
func countCloser(b []byte) int {
	var m dhtpb.Message
	if err := proto.Unmarshal(b, &m); err != nil {
		return 0
	}
	return len(m.GetCloserPeers())
}
