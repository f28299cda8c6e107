package gridkv

import (
	"testing"
	"time"

	"github.com/gridkv/gridkv/internal/testutil"
)

// Status on a 3-node cluster formed together: every node sees the three
// members alive, every group with its three replicas and one leader, every
// range counted once, and its own role matching who leads.
func TestStatus(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), BootstrapExpect: 3, Ranges: 64})
	for _, db := range nodes {
		// Leaders settle a little after WaitReady: poll until each group's
		// leader is known.
		testutil.Eventually(t, 10*time.Second, "every group's leader known on "+db.NodeID(), func() bool {
			for _, g := range db.Status().Groups {
				if g.Leader == "" {
					return false
				}
			}
			return true
		})
		st := db.Status()
		if st.NodeID != db.NodeID() || st.Addr != db.Addr() || st.GossipAddr != db.GossipAddr() || st.Ranges != 64 {
			t.Fatalf("%s: status header %+v", db.NodeID(), st)
		}
		if st.AdvertiseAddr != db.Addr() || st.GossipAdvertiseAddr != db.GossipAddr() {
			t.Errorf("%s: advertised %s %s, want the bound ones", db.NodeID(), st.AdvertiseAddr, st.GossipAdvertiseAddr)
		}
		if len(st.Members) != 3 {
			t.Fatalf("%s: members %+v", db.NodeID(), st.Members)
		}
		for i, m := range st.Members {
			if m.ID != nodes[i].NodeID() || m.State != MemberAlive || m.Addr != nodes[i].Addr() {
				t.Errorf("%s: member %d = %+v", db.NodeID(), i, m)
			}
		}
		if len(st.Groups) != 3 {
			t.Fatalf("%s: groups %+v", db.NodeID(), st.Groups)
		}
		ranges := 0
		for i, g := range st.Groups {
			ranges += g.Ranges
			if g.Group != i || len(g.Replicas) != 3 {
				t.Errorf("%s: group %+v", db.NodeID(), g)
			}
			want := RoleFollower
			if g.Leader == db.NodeID() {
				want = RoleLeader
			}
			if g.Role != want {
				t.Errorf("%s: group %d led by %s: role %q, want %q", db.NodeID(), i, g.Leader, g.Role, want)
			}
		}
		if ranges != 64 {
			t.Errorf("%s: groups carry %d ranges, want 64", db.NodeID(), ranges)
		}
	}
	// The snapshot is a copy: changing it changes nothing the node holds.
	st := nodes[0].Status()
	st.Groups[0].Replicas[0] = "changed"
	if nodes[0].Status().Groups[0].Replicas[0] == "changed" {
		t.Error("Status shares memory with the node")
	}
	nodes[2].Close()
	if st := nodes[2].Status(); st.NodeID != "n2" || len(st.Members) != 0 || len(st.Groups) != 0 {
		t.Errorf("closed node's status %+v", st)
	}
}
