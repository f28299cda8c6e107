package gridkv

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func TestNextSteps(t *testing.T) {
	p := func(node string, inc int) peer {
		return peer{id: raft.ServerID(fmt.Sprintf("%s/%d", node, inc)), addr: node + ":1"}
	}
	voter := func(q peer) raft.Server {
		return raft.Server{ID: q.id, Address: raft.ServerAddress(q.addr), Suffrage: raft.Voter}
	}
	nonvoter := func(q peer) raft.Server {
		return raft.Server{ID: q.id, Address: raft.ServerAddress(q.addr), Suffrage: raft.Nonvoter}
	}
	a, b, c, d := p("a", 1), p("b", 1), p("c", 1), p("d", 1)
	b2 := p("b", 2) // b restarted: a new incarnation at the same address
	cases := []struct {
		name      string
		current   []raft.Server
		target    []peer
		preferred peer
		want      string
	}{
		{"in place", []raft.Server{voter(a), voter(b), voter(c)}, []peer{a, b, c}, peer{}, ""},
		{"balance", []raft.Server{voter(a), voter(b), voter(c)}, []peer{a, b, c}, b, "balance-leader b/1"},
		{"balance only to a voter", []raft.Server{voter(a), nonvoter(b)}, []peer{a}, b, "remove b/1"},
		{"add missing", []raft.Server{voter(a), voter(b)}, []peer{a, b, c}, peer{}, "add c/1"},
		{"promote before add", []raft.Server{voter(a), nonvoter(c)}, []peer{a, b, c}, peer{}, "promote c/1, add b/1"},
		{"no removal while a target replica is missing",
			[]raft.Server{voter(a), voter(b), voter(c)}, []peer{a, b, d}, peer{}, "add d/1"},
		{"remove once the target votes",
			[]raft.Server{voter(a), voter(b), voter(c), voter(d)}, []peer{a, b, d}, peer{}, "remove c/1"},
		{"old incarnation out first, then its successor in",
			[]raft.Server{voter(a), voter(b), voter(c)}, []peer{a, b2, c}, peer{}, "remove-old-incarnation b/1, add b/2"},
		{"old incarnation out even when its node left the target",
			[]raft.Server{voter(a), voter(b), voter(c)}, []peer{a, c, {id: "e/1", addr: b.addr}}, peer{},
			"remove-old-incarnation b/1, add e/1"},
		{"step down to a target voter",
			[]raft.Server{voter(a), voter(b), voter(c)}, []peer{b, c, d}, peer{}, "add d/1"},
		{"step down once the target votes",
			[]raft.Server{voter(a), voter(b), voter(c), voter(d)}, []peer{b, c, d}, peer{}, "step-down b/1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			steps := nextSteps(confInput{self: a.id, current: tc.current, target: tc.target, preferred: tc.preferred})
			var got []string
			for _, s := range steps {
				got = append(got, s.kind.String()+" "+string(s.to.id))
			}
			if g := strings.Join(got, ", "); g != tc.want {
				t.Fatalf("got %q, want %q", g, tc.want)
			}
		})
	}
}
