package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Addrs gives distinct loopback ports outside the ephemeral range,
// released: each can be bound again, for TCP and UDP.
func TestAddrs(t *testing.T) {
	low, high := portRange(ephemeral())
	addrs, err := Addrs(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s picked twice", a)
		}
		seen[a] = true
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		if host != "127.0.0.1" || high > low && (p < low || p >= high) {
			t.Errorf("%s: want 127.0.0.1 and a port in [%d, %d)", a, low, high)
		}
		_, release, err := bind(a)
		if err != nil {
			t.Fatalf("%s not released: %v", a, err)
		}
		release()
	}
}

// A port already bound is not picked: with it the only one in the range,
// pick fails rather than return it.
func TestPickSkipsTaken(t *testing.T) {
	addr, release, err := pick(portRange(ephemeral()))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	if got, _, err := pick(p, p+1); err == nil {
		t.Fatalf("picked %s, which is bound", got)
	}
}

// The range is outside the ephemeral one: below it where there is room
// (under Kubernetes' node ports), else above it, else none.
func TestPortRange(t *testing.T) {
	for _, c := range []struct{ eLow, eHigh, low, high int }{
		{32768, 60999, lowest, highest}, // Linux's default
		{20000, 60999, lowest, 20000},
		{49152, 65535, lowest, highest}, // the IANA range
		{17000, 60999, 61000, 65536},    // no room below
		{1024, 65000, 0, 0},             // no room either side: port 0
	} {
		if low, high := portRange(c.eLow, c.eHigh); low != c.low || high != c.high {
			t.Errorf("ephemeral [%d, %d]: [%d, %d), want [%d, %d)", c.eLow, c.eHigh, low, high, c.low, c.high)
		}
	}
}
