package gossip

import (
	"fmt"
	"net"
	"strings"
)

// The join checks. They are pure: memberlist's delegates (NotifyMerge,
// NotifyAlive) gather the inputs and act on the answer.

// peer is what the checks know of one node.
type peer struct {
	name, addr string // addr: its gossip address, host:port
	live       bool   // alive or suspect, as the list's sender sees it
	meta       []byte
	ip         net.IP // addr, parsed, to ping
	port       uint16
}

// refusal is why a merge was refused.
type refusal struct {
	err error // wraps ErrIncompatible, or says whose name is held
	// holder is set when a live member holds the refusing node's own name:
	// the address to ping, to tell a live duplicate from a crashed
	// predecessor not yet declared dead.
	holder *net.UDPAddr
}

// checkMerge decides whether a node may merge the node list peers, sent in a
// join's state exchange. self is the node's name, settings its own (sorted),
// live its members as it sees them (name -> gossip address, itself
// included). It refuses:
//   - a live peer with a name live here at another address: in the node
//     that joins, a member holding its own name; in the member it joins
//     through, a newcomer taking the name of a member. A name at the same
//     address is the same node, or its restart there: memberlist sorts
//     that out by incarnation;
//   - a live peer (other than one of self's name) whose settings differ
//     from ours, or whose metadata cannot be read.
//
// Both sides of a join run it on each other's lists and refuse together,
// so neither counts the other.
func checkMerge(self string, settings []Setting, live map[string]string, peers []peer) *refusal {
	for _, p := range peers {
		if !p.live {
			continue // a dead or departed node's name and settings bind no one
		}
		if at, ok := live[p.name]; ok && at != p.addr {
			if p.name == self {
				return &refusal{
					err:    fmt.Errorf("%w: %q is live at %s, this node is at %s", ErrNameTaken, p.name, p.addr, at),
					holder: &net.UDPAddr{IP: p.ip, Port: int(p.port)},
				}
			}
			return &refusal{err: fmt.Errorf("gossip: refused %q at %s: a member of that name is live at %s", p.name, p.addr, at)}
		}
	}
	for _, p := range peers {
		if !p.live || p.name == self {
			continue
		}
		if err := checkSettings(settings, p); err != nil {
			return &refusal{err: err}
		}
	}
	return nil
}

// checkSettings returns an error wrapping ErrIncompatible, naming each
// differing setting with both values, when p's settings differ from mine.
func checkSettings(mine []Setting, p peer) error {
	_, theirs, err := decodeMeta(p.meta)
	if err == nil {
		theirs, err = sortSettings(theirs)
	}
	if err != nil {
		return fmt.Errorf("%w: member %q at %s sent metadata this node cannot read: %v", ErrIncompatible, p.name, p.addr, err)
	}
	if d := diffSettings(mine, theirs); d != "" {
		return fmt.Errorf("%w: member %q at %s has %s", ErrIncompatible, p.name, p.addr, d)
	}
	return nil
}

// takeRefusal returns (and forgets) the refusal that made memberlist's
// Join fail with err, or nil. NotifyMerge runs on both sides of a join and
// cannot tell which side it is on, so refusals of joins asked of this node
// are recorded too; memberlist puts the text of the joining side's refusal
// into Join's error, and only that one is in it.
func (n *Node) takeRefusal(err error) *refusal {
	text := err.Error()
	n.refuseMu.Lock()
	defer n.refuseMu.Unlock()
	for i, r := range n.refusals {
		if strings.Contains(text, r.err.Error()) {
			n.refusals = append(n.refusals[:i], n.refusals[i+1:]...)
			return r
		}
	}
	return nil
}
