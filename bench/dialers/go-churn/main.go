// kadfast-go-churn: the dialing side of bench/churn_bench.py, written against
// go-libp2p so that the dialer is not what limits the connection rate.
//
// It opens libp2p connections (TCP, Noise XX, Yamux, identify both ways) to
// one server and either keeps them ("hold") or closes each one as soon as it
// is complete and opens the next ("churn"). It is driven like the interop
// peers (tests/interop/peers/PROTOCOL.md): JSON lines on stdin, one reply
// line per request on stdout, logs on stderr only.
//
// Every connection comes from a go-libp2p host of its own identity: a
// go-libp2p host keeps at most one connection to a peer (DialPeer returns
// the existing one, and concurrent dials to one peer are merged), so a pool
// of hosts is what gives many simultaneous connections to one server. Each
// host: Ed25519 identity, no listen address, one transport (TCP with Noise
// and Yamux, or QUIC: prepare's "transport"), a resource manager without
// limits (one, shared by all hosts), a connection manager that never trims,
// identify (go-libp2p's own service).
//
// A connection counts as complete when
//  1. go-libp2p's identify of the server finished on it
//     (EvtPeerIdentificationCompleted for that connection),
//  2. we answered the server's identify request on it, and
//  3. a Yamux ping sent after that answer came back, which proves the
//     server has read our identify answer. Over QUIC, which has no Yamux,
//     a libp2p ping (/ipfs/ping/1.0.0, one round trip on a stream of its
//     own, opened after the answer was sent) takes its place.
//
// Source addresses: every TCP connection is bound to the next address of
// 127.0.1.1 ... 127.0.250.254 (round robin, port 0, with
// IP_BIND_ADDRESS_NO_PORT so that the port is chosen at connect time), so
// that TIME_WAIT of closed connections is spread over ~63,000 addresses
// and never exhausts the ports of one. Over QUIC each host's UDP socket is
// bound to the next of those addresses (quicreuse's OverrideListenUDP), so
// that per-IP limits of the server see distinct peers, as with TCP.
//
// Commands (besides the PROTOCOL.md framing):
//
//	prepare    {addr, churn_hosts, hold_hosts, transport}
//	                                            create hosts (before the clock runs);
//	                                            transport "tcp" (default) or "quic"
//	hold       {addr, count, concurrency}       open count connections and keep them
//	churn      {addr, start_at, stop_at, concurrency}
//	                                            open, complete and close connections until
//	                                            stop_at (unix seconds); count those completed
//	                                            in [start_at, stop_at)
//	check_held {}                               how many held connections are still open
//	close_held {}                               close them
//	stats      {}                               goroutines, hosts, RSS
//	stop       {}
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	goyamux "github.com/libp2p/go-yamux/v5"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	implName = "go-churn"
	// Linux IP_BIND_ADDRESS_NO_PORT (not in package syscall)
	ipBindAddressNoPort = 24
	connTimeout         = 20 * time.Second
	identifyGrace       = 2 * time.Second
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
	fmt.Fprintf(os.Stderr, "[kadfast-go-churn] "+format+"\n", args...)
}

func fatal(err error) {
	emit(map[string]any{"event": "fatal", "error": err.Error()})
	os.Exit(1)
}

// ---------------------------------------------------------------- source addresses

// sources hands out 127.x.y.z source addresses round robin.
type sources struct {
	next atomic.Uint64
	ips  []net.IP
}

func newSources() *sources {
	s := &sources{}
	for b := 1; b <= 250; b++ {
		for c := 1; c <= 254; c++ {
			s.ips = append(s.ips, net.IPv4(127, 0, byte(b), byte(c)).To4())
		}
	}
	return s
}

func (s *sources) pick() net.IP {
	return s.ips[(s.next.Add(1)-1)%uint64(len(s.ips))]
}

func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// dialerFor is the TCP transport's dialer: loopback targets are dialed from
// the next source address, anything else from the default one.
func (s *sources) dialerFor(raddr ma.Multiaddr) (tcp.ContextDialer, error) {
	if ip, err := manet.ToIP(raddr); err == nil && ip.To4() != nil && ip.IsLoopback() {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: s.pick()}, Control: bindNoPort}, nil
	}
	return &net.Dialer{}, nil
}

// ---------------------------------------------------------------- per-connection signals

type connState struct {
	identified chan struct{}
	answered   chan struct{}
	idOnce     sync.Once
	ansOnce    sync.Once
}

type signals struct{ m sync.Map } // network.Conn -> *connState

func (g *signals) get(c network.Conn) *connState {
	if v, ok := g.m.Load(c); ok {
		return v.(*connState)
	}
	v, _ := g.m.LoadOrStore(c, &connState{identified: make(chan struct{}), answered: make(chan struct{})})
	return v.(*connState)
}

func (g *signals) identified(c network.Conn) {
	st := g.get(c)
	st.idOnce.Do(func() { close(st.identified) })
}

func (g *signals) answered(c network.Conn) {
	st := g.get(c)
	st.ansOnce.Do(func() { close(st.answered) })
}

func (g *signals) forget(c network.Conn) { g.m.Delete(c) }

// ---------------------------------------------------------------- hosts

type slot struct {
	h    host.Host
	ids  identify.IDService
	conn network.Conn // the held connection (hold slots)
	// why go's last identify of the server failed (a string), for the error counts
	idFailure atomic.Value
}

type dialer struct {
	rm      network.ResourceManager
	src     *sources
	sig     signals
	version string
	// "tcp" or "quic", fixed by the first prepare
	transport string

	mu     sync.Mutex
	server peer.AddrInfo
	churn  []*slot
	hold   []*slot
	nHeld  int // hold slots in use (slots [0, nHeld) carry a connection or failed)
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
	return v
}

// fakeStream plays the dialing side of multistream-select for one protocol,
// to obtain the handler the host registered for it.
type fakeStream struct {
	r io.Reader
}

func (f *fakeStream) Read(p []byte) (int, error)  { return f.r.Read(p) }
func (f *fakeStream) Write(p []byte) (int, error) { return len(p), nil }
func (f *fakeStream) Close() error                { return nil }

func msLine(s string) []byte {
	var b bytes.Buffer
	b.WriteByte(byte(len(s) + 1)) // short lines: one-byte varint
	b.WriteString(s)
	b.WriteByte('\n')
	return b.Bytes()
}

func lookupHandler(h host.Host, proto protocol.ID) (protocol.HandlerFunc, error) {
	in := append(msLine("/multistream/1.0.0"), msLine(string(proto))...)
	_, handler, err := h.Mux().Negotiate(&fakeStream{r: bytes.NewReader(in)})
	if err != nil {
		return nil, err
	}
	return handler, nil
}

func (d *dialer) newSlot() (*slot, error) {
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	var transport []libp2p.Option
	if d.transport == "quic" {
		// this host's UDP socket on a loopback address of its own
		src := d.src.pick()
		listen := func(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
			if network == "udp4" && (laddr == nil || laddr.IP.IsUnspecified()) {
				port := 0
				if laddr != nil {
					port = laddr.Port
				}
				laddr = &net.UDPAddr{IP: src, Port: port}
			}
			return net.ListenUDP(network, laddr)
		}
		transport = []libp2p.Option{
			libp2p.Transport(libp2pquic.NewTransport),
			libp2p.QUICReuse(quicreuse.NewConnManager, quicreuse.OverrideListenUDP(listen)),
		}
	} else {
		transport = []libp2p.Option{
			libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(d.src.dialerFor)),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		}
	}
	opts := append([]libp2p.Option{libp2p.Identity(priv), libp2p.NoListenAddrs}, transport...)
	h, err := libp2p.New(append(opts,
		libp2p.ResourceManager(d.rm),
		libp2p.ConnectionManager(&connmgr.NullConnMgr{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.UserAgent("kadfast-go-churn go-libp2p/"+d.version),
		libp2p.ProtocolVersion("ipfs/0.1.0"),
	)...)
	if err != nil {
		return nil, err
	}
	withIDs, ok := h.(interface{ IDService() identify.IDService })
	if !ok {
		h.Close()
		return nil, errors.New("host without an identify service")
	}
	s := &slot{h: h, ids: withIDs.IDService()}
	// know when we have answered the server's identify request
	orig, err := lookupHandler(h, identify.ID)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("identify handler: %w", err)
	}
	h.SetStreamHandler(identify.ID, func(st network.Stream) {
		c := st.Conn()
		_ = orig(identify.ID, st)
		d.sig.answered(c)
	})
	sub, err := h.EventBus().Subscribe([]any{new(event.EvtPeerIdentificationCompleted),
		new(event.EvtPeerIdentificationFailed)})
	if err != nil {
		h.Close()
		return nil, err
	}
	go func() {
		for ev := range sub.Out() {
			switch e := ev.(type) {
			case event.EvtPeerIdentificationCompleted:
				if e.Conn != nil {
					d.sig.identified(e.Conn)
				}
			case event.EvtPeerIdentificationFailed:
				if e.Reason != nil {
					s.idFailure.Store(e.Reason.Error())
				}
			}
		}
	}()
	return s, nil
}

// makeSlots creates n hosts on all CPUs.
func (d *dialer) makeSlots(n int) ([]*slot, error) {
	out := make([]*slot, n)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	var next atomic.Int64
	for w := 0; w < runtime.GOMAXPROCS(0)*2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				s, err := d.newSlot()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				out[i] = s
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	return out, nil
}

func (d *dialer) setServer(addr string) error {
	if addr == "" {
		if d.server.ID == "" {
			return errors.New("no server address given")
		}
		return nil
	}
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return fmt.Errorf("addr: %w", err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(m)
	if err != nil {
		return fmt.Errorf("addr: %w", err)
	}
	if d.server.ID != "" && d.server.ID != ai.ID {
		return errors.New("the server changed; start a new dialer")
	}
	if d.server.ID == "" {
		d.server = *ai
		for _, s := range append(append([]*slot{}, d.churn...), d.hold...) {
			s.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.PermanentAddrTTL)
		}
	}
	return nil
}

// connect opens one new connection from s to the server and waits until it
// is complete (see the top of the file).
func (d *dialer) connect(s *slot) (network.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), connTimeout)
	defer cancel()
	// The swarm forgets a closed connection a moment after Close (QUIC's
	// close goes through quic-go first); until then DialPeer may hand back
	// the closing one. Wait for it to go (hosts take turns, so this rarely
	// waits at all).
	for i := 0; i < 2000 && len(s.h.Network().ConnsToPeer(d.server.ID)) > 0; i++ {
		time.Sleep(time.Millisecond)
	}
	// force: no dial back-off after a failure
	conn, err := s.h.Network().DialPeer(network.WithForceDirectDial(ctx, "churn"), d.server.ID)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	st := d.sig.get(conn)
	fail := func(what string, err error) (network.Conn, error) {
		conn.Close()
		d.sig.forget(conn)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return nil, errors.New(what)
	}
	select {
	case <-s.ids.IdentifyWait(conn):
	case <-ctx.Done():
		return fail("identify", ctx.Err())
	}
	// IdentifyWait also ends on failure; the completion event is emitted
	// before it ends, and reaches st.identified a moment later.
	grace := time.NewTimer(identifyGrace)
	defer grace.Stop()
	select {
	case <-st.identified:
	case <-grace.C:
		why, _ := s.idFailure.Load().(string)
		if why != "" {
			why = " (" + why + ")"
		}
		if conn.IsClosed() {
			return fail("connection closed before identify completed"+why, nil)
		}
		return fail("identify of the server failed"+why, nil)
	}
	select {
	case <-st.answered:
	case <-ctx.Done():
		return fail("the server sent no identify request", ctx.Err())
	}
	if d.transport == "quic" {
		if err := pingOnce(ctx, conn); err != nil {
			return fail("ping", err)
		}
		d.sig.forget(conn)
		return conn, nil
	}
	var sess *goyamux.Session
	if !conn.As(&sess) {
		return fail("not a yamux connection", nil)
	}
	if _, err := sess.Ping(); err != nil {
		return fail("yamux ping", err)
	}
	d.sig.forget(conn)
	return conn, nil
}

// pingOnce is one libp2p ping round trip on a new stream of conn.
func pingOnce(ctx context.Context, conn network.Conn) error {
	st, err := conn.NewStream(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(connTimeout))
	st.SetProtocol(ping.ID)
	if err := msSelect(st, string(ping.ID)); err != nil {
		st.Reset()
		return err
	}
	payload := make([]byte, ping.PingSize)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if _, err := st.Write(payload); err != nil {
		st.Reset()
		return err
	}
	back := make([]byte, ping.PingSize)
	if _, err := io.ReadFull(st, back); err != nil {
		st.Reset()
		return err
	}
	if !bytes.Equal(back, payload) {
		st.Reset()
		return errors.New("ping: wrong payload back")
	}
	return nil
}

// msSelect proposes one protocol on a fresh stream (multistream-select as
// the initiator, both lines sent at once) and reads the two answers.
func msSelect(rw io.ReadWriter, proto string) error {
	if _, err := rw.Write(append(msLine("/multistream/1.0.0"), msLine(proto)...)); err != nil {
		return err
	}
	for _, want := range []string{"/multistream/1.0.0", proto} {
		var n [1]byte
		if _, err := io.ReadFull(rw, n[:]); err != nil {
			return err
		}
		if n[0] == 0 || n[0] > 127 {
			return errors.New("multistream: bad length")
		}
		line := make([]byte, n[0])
		if _, err := io.ReadFull(rw, line); err != nil {
			return err
		}
		if string(line) != want+"\n" {
			return fmt.Errorf("multistream: %q refused (%q)", proto, line)
		}
	}
	return nil
}

// ---------------------------------------------------------------- commands

type request struct {
	ID          json.RawMessage `json:"id"`
	Cmd         string          `json:"cmd"`
	Addr        string          `json:"addr"`
	ChurnHosts  int             `json:"churn_hosts"`
	HoldHosts   int             `json:"hold_hosts"`
	Transport   string          `json:"transport"`
	Count       int             `json:"count"`
	Concurrency int             `json:"concurrency"`
	StartAt     float64         `json:"start_at"`
	StopAt      float64         `json:"stop_at"`
	Timeout     *float64        `json:"timeout"`
}

type errCounter struct {
	mu sync.Mutex
	m  map[string]int
	n  int
}

func (e *errCounter) add(err error) {
	msg := err.Error()
	if len(msg) > 400 {
		msg = msg[:400]
	}
	e.mu.Lock()
	if e.m == nil {
		e.m = map[string]int{}
	}
	e.m[msg]++
	e.n++
	e.mu.Unlock()
}

// top returns the five most frequent errors.
func (e *errCounter) top() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(e.m))
	for k := range e.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return e.m[keys[i]] > e.m[keys[j]] })
	out := map[string]int{}
	for i, k := range keys {
		if i == 5 {
			break
		}
		out[k] = e.m[k]
	}
	return out
}

func unixNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func (d *dialer) cmdPrepare(r request) (any, error) {
	t0 := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	want := r.Transport
	if want == "" {
		want = "tcp"
	}
	if want != "tcp" && want != "quic" {
		return nil, fmt.Errorf("transport %q: tcp or quic", want)
	}
	if d.transport == "" {
		d.transport = want
	} else if d.transport != want {
		return nil, errors.New("the transport changed; start a new dialer")
	}
	if err := d.setServer(r.Addr); err != nil {
		return nil, err
	}
	add := func(pool *[]*slot, want int) error {
		if want <= len(*pool) {
			return nil
		}
		more, err := d.makeSlots(want - len(*pool))
		if err != nil {
			return err
		}
		for _, s := range more {
			s.h.Peerstore().AddAddrs(d.server.ID, d.server.Addrs, peerstore.PermanentAddrTTL)
		}
		*pool = append(*pool, more...)
		return nil
	}
	if err := add(&d.churn, r.ChurnHosts); err != nil {
		return nil, err
	}
	if err := add(&d.hold, r.HoldHosts); err != nil {
		return nil, err
	}
	return map[string]any{"churn_hosts": len(d.churn), "hold_hosts": len(d.hold),
		"seconds": time.Since(t0).Seconds(), "goroutines": runtime.NumGoroutine()}, nil
}

func (d *dialer) cmdHold(r request) (any, error) {
	d.mu.Lock()
	if err := d.setServer(r.Addr); err != nil {
		d.mu.Unlock()
		return nil, err
	}
	if r.Count < 0 || d.nHeld+r.Count > len(d.hold) {
		n := len(d.hold) - d.nHeld
		d.mu.Unlock()
		return nil, fmt.Errorf("only %d hold hosts left; prepare more", n)
	}
	slots := d.hold[d.nHeld : d.nHeld+r.Count]
	d.nHeld += r.Count
	d.mu.Unlock()
	conc := max(r.Concurrency, 1)
	var errs errCounter
	var opened atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(slots) {
					return
				}
				c, err := d.connect(slots[i])
				if err != nil {
					errs.add(err)
					continue
				}
				slots[i].conn = c
				opened.Add(1)
			}
		}()
	}
	wg.Wait()
	return map[string]any{"opened": opened.Load(), "failed": errs.n, "errors": errs.top(),
		"seconds": time.Since(t0).Seconds()}, nil
}

func (d *dialer) cmdChurn(r request) (any, error) {
	d.mu.Lock()
	if err := d.setServer(r.Addr); err != nil {
		d.mu.Unlock()
		return nil, err
	}
	pool := make(chan *slot, len(d.churn))
	for _, s := range d.churn {
		pool <- s
	}
	d.mu.Unlock()
	conc := max(r.Concurrency, 1)
	if conc > len(pool) {
		return nil, fmt.Errorf("concurrency %d above the %d churn hosts prepared", conc, len(pool))
	}
	var errs errCounter
	var inWindow, total atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			streak := 0
			for unixNow() < r.StopAt {
				s := <-pool
				c, err := d.connect(s)
				if err != nil {
					pool <- s
					errs.add(err)
					streak++
					if streak > 200 {
						return
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				streak = 0
				now := unixNow()
				c.Close()
				pool <- s // to the back of the queue: hosts take turns
				total.Add(1)
				if r.StartAt <= now && now < r.StopAt {
					inWindow.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return map[string]any{"in_window": inWindow.Load(), "total": total.Load(), "failed": errs.n,
		"errors": errs.top(), "seconds": time.Since(t0).Seconds()}, nil
}

func (d *dialer) cmdCheckHeld() (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	held, alive := 0, 0
	for _, s := range d.hold[:d.nHeld] {
		if s.conn == nil {
			continue
		}
		held++
		if !s.conn.IsClosed() {
			alive++
		}
	}
	return map[string]any{"held": held, "alive": alive, "lost": held - alive}, nil
}

func (d *dialer) cmdCloseHeld() (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, s := range d.hold[:d.nHeld] {
		if s.conn != nil {
			s.conn.Close()
			s.conn = nil
			n++
		}
	}
	// the hosts can hold again
	d.nHeld = 0
	return map[string]any{"closed": n}, nil
}

func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var n int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d", &n)
			return n
		}
	}
	return 0
}

func (d *dialer) cmdStats() (any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return map[string]any{"goroutines": runtime.NumGoroutine(), "churn_hosts": len(d.churn),
		"hold_hosts": len(d.hold), "rss_kib": rssKiB(), "gomaxprocs": runtime.GOMAXPROCS(0)}, nil
}

func (d *dialer) handle(r request) {
	var res any
	var err error
	switch r.Cmd {
	case "prepare":
		res, err = d.cmdPrepare(r)
	case "hold":
		res, err = d.cmdHold(r)
	case "churn":
		res, err = d.cmdChurn(r)
	case "check_held":
		res, err = d.cmdCheckHeld()
	case "close_held":
		res, err = d.cmdCloseHeld()
	case "stats":
		res, err = d.cmdStats()
	default:
		err = fmt.Errorf("unsupported: %s", r.Cmd)
	}
	if err != nil {
		emit(map[string]any{"id": r.ID, "ok": false, "error": err.Error()})
		return
	}
	emit(map[string]any{"id": r.ID, "ok": true, "result": res})
}

var stopProfile = func() {}

func raiseNofile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

func main() {
	nofile := raiseNofile()
	// a CPU profile of the whole run, for looking into the dialer's own cost
	if path := os.Getenv("KADFAST_CHURN_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fatal(fmt.Errorf("cpu profile: %w", err))
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(fmt.Errorf("cpu profile: %w", err))
		}
		stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
	}
	// Most of the dialer's garbage is short-lived: collect less often than
	// the default (GOGC=200 unless GOGC is set). The live heap is mostly the
	// hosts, about 150 KiB each, so 11,000 hosts take some 3 GiB this way.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(200)
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits), rcmgr.WithMetricsDisabled())
	if err != nil {
		fatal(fmt.Errorf("resource manager: %w", err))
	}
	d := &dialer{rm: rm, src: newSources(), version: agentVersion()}
	emit(map[string]any{
		"event":      "ready",
		"impl":       implName,
		"peer_id":    "", // one identity per host, see prepare
		"addrs":      []string{"/ip4/127.0.0.0/ipcidr/8"},
		"go_libp2p":  d.version,
		"gomaxprocs": runtime.GOMAXPROCS(0),
		"nofile":     nofile,
		"sources":    len(d.src.ips),
	})

	var wg sync.WaitGroup
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r request
		if err := json.Unmarshal(line, &r); err != nil {
			logf("bad request line: %v", err)
			continue
		}
		if r.Cmd == "stop" {
			stopProfile()
			emit(map[string]any{"id": r.ID, "ok": true, "result": map[string]any{}})
			os.Exit(0)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.handle(r)
		}()
	}
	stopProfile()
	os.Exit(0)
}
