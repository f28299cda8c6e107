package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The baseline: hashicorp's NetworkTransport, one per group, each over a
// StreamLayer multiplexed on the node's single TCP listener (a connection
// opens with an 8-byte group id and is handed to that group's transport).
// This is what an application gets from hashicorp/raft without a shared
// transport.

type muxListener struct {
	ln     net.Listener
	mu     sync.Mutex
	groups map[uint64]*streamLayer
	wg     sync.WaitGroup
}

func newMuxListener() (*muxListener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m := &muxListener{ln: ln, groups: map[uint64]*streamLayer{}}
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.accept() }()
	return m, nil
}

func (m *muxListener) accept() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			var pre [8]byte
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, pre[:]); err != nil {
				c.Close()
				return
			}
			_ = c.SetReadDeadline(time.Time{})
			m.mu.Lock()
			sl := m.groups[binary.BigEndian.Uint64(pre[:])]
			m.mu.Unlock()
			if sl == nil {
				c.Close()
				return
			}
			select {
			case sl.conns <- c:
			case <-sl.closed:
				c.Close()
			}
		}()
	}
}

func (m *muxListener) layer(group uint64) *streamLayer {
	sl := &streamLayer{m: m, group: group, conns: make(chan net.Conn, 16), closed: make(chan struct{})}
	m.mu.Lock()
	m.groups[group] = sl
	m.mu.Unlock()
	return sl
}

func (m *muxListener) close() {
	m.ln.Close()
	m.wg.Wait()
}

type streamLayer struct {
	m      *muxListener
	group  uint64
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, errors.New("closed")
	}
}

func (s *streamLayer) Close() error   { s.once.Do(func() { close(s.closed) }); return nil }
func (s *streamLayer) Addr() net.Addr { return s.m.ln.Addr() }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	var pre [8]byte
	binary.BigEndian.PutUint64(pre[:], s.group)
	if _, err := c.Write(pre[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("preamble: %w", err)
	}
	return c, nil
}

func newBaselineTransport(m *muxListener, group uint64) raft.Transport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  m.layer(group),
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hclog.NewNullLogger(),
	})
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))
