package gridkv

import (
	"slices"
	"sort"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

// Status is a snapshot of what this node knows of the cluster, for
// operators (a status page, INFO): its own addresses, the live members,
// and the replica groups with their replicas and leaders. It is a copy:
// nothing in it changes after Status returns, and it may already be
// stale then. Its JSON form (encoding/json) has lower_snake_case keys,
// and a RoleNone role is "none".
type Status struct {
	NodeID string `json:"node_id"`
	// Addr and GossipAddr are the bound addresses (DB.Addr,
	// DB.GossipAddr); AdvertiseAddr and GossipAdvertiseAddr are the ones
	// this node announces to the others (its Member.Addr and
	// Member.GossipAddr).
	Addr                string `json:"addr"`
	GossipAddr          string `json:"gossip_addr"`
	AdvertiseAddr       string `json:"advertise_addr"`
	GossipAdvertiseAddr string `json:"gossip_advertise_addr"`
	// Ranges is the number of hash ranges of the key space.
	Ranges int `json:"ranges"`
	// Members are the live members, this node included, sorted by ID.
	Members []MemberStatus `json:"members"`
	// Groups are the replica groups this node knows to exist, by number;
	// empty while it does not know the cluster yet.
	Groups []GroupStatus `json:"groups"`
}

// Held is how many of the groups this node holds a replica of (leading,
// following or learning), and how many ranges those groups serve.
func (s Status) Held() (groups, ranges int) {
	for _, g := range s.Groups {
		if g.Role != RoleNone {
			groups++
			ranges += g.Ranges
		}
	}
	return groups, ranges
}

// Led is how many of the groups this node leads, and how many ranges
// those groups serve.
func (s Status) Led() (groups, ranges int) {
	for _, g := range s.Groups {
		if g.Role == RoleLeader {
			groups++
			ranges += g.Ranges
		}
	}
	return groups, ranges
}

// Role sums up this node's part in the cluster: RoleLeader when it leads
// a group, else RoleFollower when it holds a replica of one (a learner's
// included), else RoleNone.
func (s Status) Role() Role {
	if led, _ := s.Led(); led > 0 {
		return RoleLeader
	}
	if held, _ := s.Held(); held > 0 {
		return RoleFollower
	}
	return RoleNone
}

// MemberStatus is a live member and its state.
type MemberStatus struct {
	Member
	State MemberState `json:"state"`
}

// MemberState is a live member's state as gossip tells it.
type MemberState string

const (
	// MemberAlive is a member serving as usual.
	MemberAlive MemberState = "alive"
	// MemberLeaving is a member whose Close has begun: it is handing off
	// its replicas and no new replica is placed on it.
	MemberLeaving MemberState = "leaving"
)

// GroupStatus is one replica group as this node knows it. For a group it
// holds a replica of, Leader and Replicas come from its replica's Raft
// state; for the others, from gossip (the leader the members announce)
// and placement (the replicas the group should have), like Locate.
type GroupStatus struct {
	Group    int      `json:"group"`
	Leader   string   `json:"leader"`   // node id; "" while no leader is known
	Replicas []string `json:"replicas"` // node ids, sorted
	// Ranges is how many ranges this node routes to the group now.
	Ranges int `json:"ranges"`
	// Role is this node's role in the group.
	Role Role `json:"role"`
	// LastTerm and LastIndex are the term and index of the last Raft log
	// entry this node's replica stores (committed or not); 0 without a
	// replica. After a group lost its majority, run DB.RecoverGroup on the
	// survivor with the largest (LastTerm, LastIndex), compared term
	// first: it holds every write any survivor had applied.
	LastTerm  uint64 `json:"last_term,omitempty"`
	LastIndex uint64 `json:"last_index,omitempty"`
	// Creation is the creation of the group this node's replica is of:
	// the layout epoch that created the group again (after DB.RecoverGroup,
	// or a group created again before it started), 0 for its first.
	// Replicas of an older creation than the cluster's are dropped.
	Creation uint64 `json:"creation,omitempty"`
}

// Role is a node's part in one replica group.
type Role string

const (
	RoleLeader   Role = "leader"   // it holds a replica and leads the group
	RoleFollower Role = "follower" // it holds a voting replica, not the leader
	RoleLearner  Role = "learner"  // it holds a replica being added (not yet voting)
	RoleNone     Role = ""         // it holds no replica of the group
)

// String is the role's name; RoleNone's is "none".
func (r Role) String() string {
	if r == RoleNone {
		return "none"
	}
	return string(r)
}

// MarshalText is String: RoleNone is "none" in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (r *Role) UnmarshalText(b []byte) error {
	if *r = Role(b); *r == "none" {
		*r = RoleNone
	}
	return nil
}

// Status returns a snapshot of this node's view of the cluster (see
// Status). It does not block on the network: it reads what the node
// holds. After Close it returns the node's id and addresses only.
func (db *DB) Status() Status {
	st := Status{NodeID: db.cfg.NodeID, Addr: db.Addr(), GossipAddr: db.GossipAddr(), Ranges: db.cfg.Ranges}
	if db.isClosed() {
		return st
	}
	for _, m := range db.members() {
		ms := MemberStatus{Member: Member{ID: m.Meta.NodeID, Addr: m.Meta.RPCAddr, Leads: len(m.Meta.Leads),
			GossipAddr: m.Addr, Incarnation: m.Meta.Incarnation}, State: MemberAlive}
		if m.Meta.Leaving {
			ms.State = MemberLeaving
		}
		if ms.ID == db.cfg.NodeID {
			st.AdvertiseAddr, st.GossipAdvertiseAddr = ms.Addr, ms.GossipAddr
		}
		st.Members = append(st.Members, ms)
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	if st.AdvertiseAddr == "" { // not yet in its own member table
		st.AdvertiseAddr, st.GossipAdvertiseAddr = db.host.Addr(), db.gsp.Addr()
	}
	l := db.lay.Load()
	if l == nil {
		return st
	}
	ranges := make([]int, l.exists)
	for r := range l.ranges {
		if g, _ := l.routes.lookup(r); g < len(ranges) {
			ranges[g]++
		}
	}
	for g := range l.exists {
		gs := GroupStatus{Group: g, Ranges: ranges[g]}
		gs.Leader, gs.Replicas, gs.Role = db.groupView(g)
		if rep := db.replica(g); rep != nil {
			gs.LastIndex, gs.LastTerm = rep.group.LastLog()
			gs.Creation = rep.gen
		}
		st.Groups = append(st.Groups, gs)
	}
	return st
}

// groupView is group g's leader and replicas (node ids, sorted) as this
// node knows them, and this node's role in it: from its replica's Raft
// state when it holds one, else from gossip and placement.
func (db *DB) groupView(g int) (leader string, replicas []string, role Role) {
	if rep := db.replica(g); rep != nil {
		if servers, err := rep.group.Configuration(); err == nil {
			for _, s := range servers {
				node, _, err := raftgroup.ParseServerID(s.ID)
				if err != nil {
					continue
				}
				replicas = append(replicas, node)
				if node == db.cfg.NodeID {
					role = RoleFollower
					if s.Suffrage != raft.Voter {
						role = RoleLearner
					}
				}
			}
		}
		if id, _ := rep.group.Leader(); id != "" {
			leader, _, _ = raftgroup.ParseServerID(id)
		}
		if rep.group.IsLeader() {
			role = RoleLeader
		}
	} else {
		replicas = placement.Replicas(g, db.memberIDs(), db.cfg.ReplicaCount)
		hint, _ := db.leaderHint.Load(g)
		for _, m := range db.members() {
			if hint != nil && raftgroup.ServerID(m.Meta.NodeID, m.Meta.Incarnation) == hint.(peer).id {
				leader = m.Meta.NodeID
				break
			}
			if hint == nil && slices.Contains(m.Meta.Leads, g) {
				leader = m.Meta.NodeID
			}
		}
	}
	sort.Strings(replicas)
	return leader, replicas, role
}
