// Package freeport picks loopback ports for tests and the fault suite to
// bind later: a node that must know its own address before it opens (its
// peers name it as a seed), or that restarts on the address it had.
//
// The ports come from below the kernel's ephemeral range, so that no
// bind to port 0 and no outgoing connection, in this process or another
// on the machine, takes one between the pick and the bind, or while a
// node is down before it restarts on its old address. Only another pick
// of this package's can, which is a random draw among some 16,000 ports,
// checked free when made.
//
//	addrs, err := freeport.Addrs(3)
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the lowest port picked.
const lowest = 16384

// tries bounds the draws for one address.
const tries = 200

// Addrs returns n distinct loopback addresses (127.0.0.1:port) whose ports
// are free for TCP and UDP (memberlist binds both) at the time of the
// call. Each port stays bound until all n are picked.
func Addrs(n int) ([]string, error) {
	low, high := lowest, ephemeralLow()
	if high-low < 1024 { // no room below the ephemeral range
		low, high = 0, 0
	}
	addrs := make([]string, 0, n)
	for range n {
		addr, closeIt, err := pick(low, high)
		if err != nil {
			return nil, err
		}
		defer closeIt()
		addrs = append(addrs, addr)
	}
	return addrs, nil
}

// pick binds a random port in [low, high) for TCP and UDP, returning its
// address and what releases it; for an empty range, a port the kernel
// chooses.
func pick(low, high int) (string, func(), error) {
	if high <= low {
		return bind("127.0.0.1:0")
	}
	var last error
	for range tries {
		addr, release, err := bind(net.JoinHostPort("127.0.0.1", strconv.Itoa(low+rand.IntN(high-low))))
		if err == nil {
			return addr, release, nil
		}
		last = err
	}
	return "", nil, fmt.Errorf("freeport: no free port in [%d, %d) after %d tries: %w", low, high, tries, last)
}

// bind listens on addr for TCP and, on the same port, UDP.
func bind(addr string) (string, func(), error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	addr = l.Addr().String()
	p, err := net.ListenPacket("udp", addr)
	if err != nil {
		l.Close()
		return "", nil, err
	}
	return addr, func() { l.Close(); p.Close() }, nil
}

// ephemeralLow is the lowest port of the range the kernel picks from for
// port 0 and for outgoing connections (Linux's default, 32768, where the
// setting cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 32768
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return 32768
	}
	return low
}
