// Package freeport picks loopback ports for tests and the fault suite to
// bind later: a node that must know its own address before it opens (its
// peers name it as a seed), or that restarts on the address it had.
//
// The ports come from outside the kernel's ephemeral range: below it
// where there is room (from 16384, and under 30000, where Kubernetes'
// node ports start), else above it. No bind to port 0 and no outgoing
// connection, in this process or another on the machine, takes one then,
// between the pick and the bind or while a node is down before it
// restarts on its old address. Only a bind to that very port can: another
// pick of this package's (a random draw among some 13,000 ports, checked
// free when made), or a program that starts listening on a fixed port in
// the range. Where the ephemeral range leaves no room on either side, the
// kernel chooses (port 0), and the race is back.
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

// The range below the ephemeral one: [lowest, highest).
const (
	lowest  = 16384
	highest = 30000
)

// minRange is the fewest ports a range must have to be drawn from.
const minRange = 1024

// tries bounds the draws for one address.
const tries = 200

// Addrs returns n distinct loopback addresses (127.0.0.1:port) whose ports
// are free for TCP and UDP (memberlist binds both) at the time of the
// call. Each port stays bound until all n are picked.
func Addrs(n int) ([]string, error) {
	low, high := portRange(ephemeral())
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

// portRange is the range [low, high) the ports are drawn from, for the
// ephemeral range [eLow, eHigh]; empty when none outside it is wide
// enough.
func portRange(eLow, eHigh int) (low, high int) {
	if min(eLow, highest)-lowest >= minRange {
		return lowest, min(eLow, highest)
	}
	if 65536-(eHigh+1) >= minRange {
		return eHigh + 1, 65536
	}
	return 0, 0
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

// ephemeral is the range the kernel picks from for port 0 and for
// outgoing connections: Linux's setting, or its default (32768-60999)
// where the setting cannot be read.
func ephemeral() (low, high int) {
	low, high = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return low, high
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return low, high
	}
	l, err1 := strconv.Atoi(fields[0])
	h, err2 := strconv.Atoi(fields[1])
	if err1 != nil || err2 != nil {
		return low, high
	}
	return l, h
}
