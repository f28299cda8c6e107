package gossip

import (
	"errors"
	"fmt"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/gridkv/gridkv/internal/faultnet"
)

// faultyTransport puts memberlist's traffic through the fault seam: each
// packet (probes, gossip) is dropped, duplicated or delayed by the rule from
// this node's address to the destination's; a stream (push/pull, fallback
// probes) cannot be opened across a cut link, in either direction, since
// TCP needs both. Lossy and delay rules act on packets only: streams are
// TCP, which hides loss and keeps order.
//
// It implements only memberlist.Transport, not NodeAwareTransport, so that
// memberlist sends through WriteTo and DialTimeout.
type faultyTransport struct {
	inner  *memberlist.NetTransport
	faults *faultnet.Net
	self   string

	mu     sync.Mutex
	closed bool
	timers map[*time.Timer]struct{}
	wg     sync.WaitGroup // delayed-packet callbacks running
}

var errCut = errors.New("gossip: link cut by the fault seam")

// newFaultyTransport binds a memberlist network transport on bindAddr and
// wraps it; it returns the bound port.
func newFaultyTransport(bindAddr string, faults *faultnet.Net, logger *log.Logger) (*faultyTransport, int, error) {
	host, port, err := net.SplitHostPort(bindAddr)
	if err != nil {
		return nil, 0, fmt.Errorf("gossip: BindAddr %q: %w", bindAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, 0, fmt.Errorf("gossip: BindAddr %q: %w", bindAddr, err)
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: p, Logger: logger})
	if err != nil {
		return nil, 0, fmt.Errorf("gossip: %w", err)
	}
	p = nt.GetAutoBindPort()
	return &faultyTransport{inner: nt, faults: faults, self: net.JoinHostPort(host, strconv.Itoa(p)),
		timers: map[*time.Timer]struct{}{}}, p, nil
}

func (t *faultyTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *faultyTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	v := t.faults.Decide(t.self, addr)
	now := time.Now()
	if v.Copies == 0 {
		return now, nil // lost on the way
	}
	if v.Delay == 0 {
		for i := 0; i < v.Copies; i++ {
			if _, err := t.inner.WriteTo(b, addr); err != nil {
				return now, err
			}
		}
		return now, nil
	}
	held := append([]byte(nil), b...)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return now, nil
	}
	t.wg.Add(1)
	var tm *time.Timer
	tm = time.AfterFunc(v.Delay, func() {
		defer t.wg.Done()
		t.mu.Lock()
		_, live := t.timers[tm]
		delete(t.timers, tm)
		t.mu.Unlock()
		if !live {
			return
		}
		for i := 0; i < v.Copies; i++ {
			_, _ = t.inner.WriteTo(held, addr)
		}
	})
	t.timers[tm] = struct{}{}
	return now, nil
}

func (t *faultyTransport) PacketCh() <-chan *memberlist.Packet { return t.inner.PacketCh() }

func (t *faultyTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.faults.Cut(t.self, addr) || t.faults.Cut(addr, t.self) {
		return nil, errCut
	}
	return t.inner.DialTimeout(addr, timeout)
}

func (t *faultyTransport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }

// Shutdown discards held packets, waits for callbacks under way, and shuts
// the network transport down.
func (t *faultyTransport) Shutdown() error {
	t.mu.Lock()
	t.closed = true
	for tm := range t.timers {
		if tm.Stop() {
			t.wg.Done()
		}
	}
	clear(t.timers)
	t.mu.Unlock()
	t.wg.Wait()
	return t.inner.Shutdown()
}
