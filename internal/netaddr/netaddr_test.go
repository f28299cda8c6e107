package netaddr

import (
	"errors"
	"fmt"
	"net"
	"testing"
)

func TestAdvertised(t *testing.T) {
	private := func() (string, error) { return "10.1.2.3", nil }
	none := func() (string, error) { return "", nil }
	broken := func() (string, error) { return "", errors.New("no interfaces") }
	for _, c := range []struct {
		bound, advertise string
		privateIP        func() (string, error)
		want             string // "" : ErrNoPrivateIP
	}{
		{"127.0.0.1:7000", "", none, "127.0.0.1:7000"},
		{"[::1]:7000", "", none, "[::1]:7000"},
		{"127.0.0.1:7000", "203.0.113.9:9000", none, "203.0.113.9:9000"},
		{"127.0.0.1:7000", "203.0.113.9:0", none, "203.0.113.9:7000"}, // port 0: the bound one
		{"127.0.0.1:7000", "node1.example:0", none, "node1.example:7000"},
		{"0.0.0.0:7000", "203.0.113.9:0", none, "203.0.113.9:7000"},
		{"0.0.0.0:7000", "", private, "10.1.2.3:7000"},
		{"[::]:7000", "", private, "10.1.2.3:7000"},
		{":7000", "", private, "10.1.2.3:7000"},
		{"[::]:7000", "", func() (string, error) { return "fd00::2", nil }, "[fd00::2]:7000"},
		{"0.0.0.0:7000", "", none, ""},
		{"[::]:7000", "", broken, ""},
	} {
		got, err := Advertised(c.bound, c.advertise, c.privateIP)
		if c.want == "" {
			if !errors.Is(err, ErrNoPrivateIP) {
				t.Errorf("Advertised(%q, %q) = %q, %v; want ErrNoPrivateIP", c.bound, c.advertise, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Advertised(%q, %q) = %q, %v; want %q", c.bound, c.advertise, got, err, c.want)
		}
	}
}

func TestUnspecified(t *testing.T) {
	for host, want := range map[string]bool{"": true, "0.0.0.0": true, "::": true, "0:0::0": true,
		"127.0.0.1": false, "::1": false, "localhost": false, "10.0.0.1": false} {
		if got := Unspecified(host); got != want {
			t.Errorf("Unspecified(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = net.Listen("tcp", l.Addr().String())
	wrapped := fmt.Errorf("gossip: %v", err) // as memberlist's errors: the chain is lost
	if !InUse(err) || !InUse(wrapped) || InUse(errors.New("connection refused")) || InUse(nil) {
		t.Fatalf("InUse(%v) or InUse(%v) false, or true for another error", err, wrapped)
	}
}
