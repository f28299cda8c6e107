package gridkv

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
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
		// leader is known and the node's role in it matches who leads.
		// Status reads a group's leader and this node's leadership one
		// after the other, so a snapshot taken as leadership moves may
		// mismatch: the check passes on a snapshot where they agree for
		// every group, and a timeout reports the last mismatch seen.
		var st Status
		mismatch := ""
		if !testutil.Within(10*time.Second, func() bool {
			st = db.Status()
			for _, g := range st.Groups {
				want := RoleFollower
				if g.Leader == db.NodeID() {
					want = RoleLeader
				}
				if g.Leader == "" || g.Role != want {
					mismatch = fmt.Sprintf("group %d led by %q: role %q, want %q", g.Group, g.Leader, g.Role, want)
					return false
				}
			}
			return true
		}) {
			t.Fatalf("timed out after 10s waiting for every group's leader known and the roles matching it on %s; last mismatch: %s", db.NodeID(), mismatch)
		}
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

// Held, Led and Role sum up the groups; the JSON form has lower_snake
// keys and names RoleNone "none", and reads back the same.
func TestStatusSummaryAndJSON(t *testing.T) {
	st := Status{NodeID: "n1", Ranges: 10, Members: []MemberStatus{{Member: Member{ID: "n1", Addr: "a:1", Leads: 1, GossipAddr: "a:2", Incarnation: 7}, State: MemberLeaving}},
		Groups: []GroupStatus{
			{Group: 0, Leader: "n1", Replicas: []string{"n1", "n2"}, Ranges: 4, Role: RoleLeader},
			{Group: 1, Leader: "n2", Replicas: []string{"n1", "n2"}, Ranges: 3, Role: RoleFollower},
			{Group: 2, Leader: "n2", Replicas: []string{"n1", "n2"}, Ranges: 2, Role: RoleLearner},
			{Group: 3, Leader: "n3", Replicas: []string{"n3"}, Ranges: 1, Role: RoleNone},
		}}
	if g, r := st.Held(); g != 3 || r != 9 {
		t.Errorf("Held = %d, %d; want 3, 9", g, r)
	}
	if g, r := st.Led(); g != 1 || r != 4 {
		t.Errorf("Led = %d, %d; want 1, 4", g, r)
	}
	for _, tc := range []struct {
		groups []GroupStatus
		want   Role
	}{{st.Groups, RoleLeader}, {st.Groups[1:], RoleFollower}, {st.Groups[2:], RoleFollower}, {st.Groups[3:], RoleNone}, {nil, RoleNone}} {
		if got := (Status{Groups: tc.groups}).Role(); got != tc.want {
			t.Errorf("Role of %d groups = %q, want %q", len(tc.groups), got, tc.want)
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"node_id":"n1"`, `"addr":""`, `"gossip_addr":""`, `"advertise_addr":""`, `"gossip_advertise_addr":""`, `"ranges":10`,
		`"members":[{"id":"n1","addr":"a:1","leads":1,"gossip_addr":"a:2","incarnation":7,"state":"leaving"}]`,
		`{"group":0,"leader":"n1","replicas":["n1","n2"],"ranges":4,"role":"leader"}`, `"role":"learner"`, `"role":"none"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON lacks %s: %s", key, b)
		}
	}
	var back Status
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, st) {
		t.Errorf("JSON read back: %+v, %v; want %+v", back, err, st)
	}
}
