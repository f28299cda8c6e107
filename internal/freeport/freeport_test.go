package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Addrs gives distinct loopback ports below the ephemeral range, released:
// each can be bound again, for TCP and UDP.
func TestAddrs(t *testing.T) {
	addrs, err := Addrs(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	high := ephemeralLow()
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
		if host != "127.0.0.1" || p < lowest || p >= high {
			t.Errorf("%s: want 127.0.0.1 and a port in [%d, %d)", a, lowest, high)
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
	addr, release, err := pick(lowest, ephemeralLow())
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
