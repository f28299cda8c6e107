// Package netaddr decides the address a node advertises: the one other
// nodes dial, which is not the bound one behind NAT, in a container, or
// when the node listens on every interface.
//
//	adv, err := netaddr.Advertised(ln.Addr().String(), cfg.AdvertiseAddr, netaddr.PrivateIP)
package netaddr

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	sockaddr "github.com/hashicorp/go-sockaddr"
)

// ErrNoPrivateIP: bound to every interface, with no advertise address
// given, and the host has no private IP to advertise instead.
var ErrNoPrivateIP = errors.New("bound to every interface and no private IP to advertise: set the advertise address")

// Advertised is the address to advertise for a listener bound at bound
// (host:port with the real port).
//
//   - advertise set: it, with port 0 standing for the bound port (a node
//     bound to port 0 cannot know its port in advance).
//   - advertise empty, bound to a specific host: bound.
//   - advertise empty, bound to every interface ("", 0.0.0.0 or ::): no
//     other host can dial that, so privateIP picks the host, as memberlist
//     does for 0.0.0.0; an error (naming the field to set) when it finds
//     none.
//
// Pure but for privateIP, which tests replace.
func Advertised(bound, advertise string, privateIP func() (string, error)) (string, error) {
	bhost, bport, err := net.SplitHostPort(bound)
	if err != nil {
		return "", fmt.Errorf("bound address %q: %w", bound, err)
	}
	if advertise != "" {
		host, port, err := net.SplitHostPort(advertise)
		if err != nil {
			return "", fmt.Errorf("advertise address %q: %w", advertise, err)
		}
		if port == "0" {
			port = bport
		}
		return net.JoinHostPort(host, port), nil
	}
	if !Unspecified(bhost) {
		return bound, nil
	}
	ip, err := privateIP()
	if err != nil {
		return "", fmt.Errorf("%w (%s; %v)", ErrNoPrivateIP, bound, err)
	}
	if ip == "" {
		return "", fmt.Errorf("%w (%s)", ErrNoPrivateIP, bound)
	}
	return net.JoinHostPort(ip, bport), nil
}

// Unspecified reports whether host means every interface: empty,
// 0.0.0.0 or :: (in any spelling).
func Unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// PrivateIP is the host's first private (RFC 6890) address, the one
// memberlist advertises for a node bound to 0.0.0.0 (go-sockaddr's
// GetPrivateIP: it skips loopback, and prefers the interface of the
// default route); "" when there is none.
func PrivateIP() (string, error) {
	ip, err := sockaddr.GetPrivateIP()
	if err != nil {
		return "", errors.New(oneLine(err.Error()))
	}
	return ip, nil
}

// InUse reports whether err says an address could not be bound because
// something else holds it. The text is checked too: memberlist's listener
// errors do not wrap the syscall error.
func InUse(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use"))
}

func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}
