package raftgroup

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHelloAddressChecked: the address an inbound hello claims becomes a
// peer's key and its metric label, so one that is not valid UTF-8, too
// long, or not a host:port with a numeric port is refused (the listener
// hangs up) and never appears in PeerStats; a good one is listed while
// its connection lives, and left out once it is gone.
func TestHelloAddressChecked(t *testing.T) {
	c := newTestCluster(t, 1, 0, func(cfg *Config) { cfg.DetailedStats = true })
	h := c.hosts[0]
	open := func(addr string) net.Conn {
		t.Helper()
		conn, err := net.DialTimeout("tcp", h.BoundAddr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(helloFrame(kindPeerHello, addr)); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	for _, addr := range []string{"\xff\xfe:1", "127.0.0.1:" + strings.Repeat("1", maxHelloAddr), "127.0.0.1", ":80", "127.0.0.1:http", "127.0.0.1:70000"} {
		conn := open(addr)
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _, err := readFrame(bufio.NewReader(conn))
		_ = conn.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("hello from %q: the connection was kept", addr)
		}
		for _, p := range h.PeerStats() {
			if p.Addr == addr {
				t.Errorf("hello from %q: listed in PeerStats", addr)
			}
		}
	}

	const good = "127.0.0.1:9"
	conn := open(good)
	listed := func() bool {
		for _, p := range h.PeerStats() {
			if p.Addr == good {
				return true
			}
		}
		return false
	}
	eventually(t, 5*time.Second, "the good hello's peer to be listed", listed)
	_ = conn.Close()
	eventually(t, 5*time.Second, "the closed peer to be left out", func() bool { return !listed() })
}
