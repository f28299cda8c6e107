package gridkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/raftgroup"
)

// sample sums, over the series of metric name in families that carry every
// label of want, their value: a counter's or gauge's value, a histogram's
// sample count. found is false when no series matches.
func sample(families []*dto.MetricFamily, name string, want map[string]string) (sum float64, found bool) {
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			found = true
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum, found
}

func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// TestMetrics: a 3-node cluster, each node with a registry of its own.
// Writes, reads on every path, a forwarded write and a scan move the
// operation, forwarding, Raft, transport, membership and holding metrics;
// every series carries the node's label, and the names pass the official
// linter.
func TestMetrics(t *testing.T) {
	const memoryLimit = 64 << 20
	regs := make([]*prometheus.Registry, 3)
	var nodes []*DB
	for i := range regs {
		regs[i] = prometheus.NewRegistry()
		c := Config{NodeID: fmt.Sprint("n", i), Logger: quiet, Timing: LocalTiming(), MemoryLimit: memoryLimit, Metrics: regs[i]}
		if i > 0 {
			c.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := Open(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		nodes = append(nodes, db)
	}
	waitClusterReady(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A key whose group n0 does not lead: n0 forwards its writes, and its
	// leader serves the lease reads.
	leaderOfKey := func(key string) int {
		for i, db := range nodes {
			if rep := db.replica(groupOf(db, key)); rep != nil && rep.group.IsLeader() {
				return i
			}
		}
		return -1
	}
	// The leader may move between the choice and the Set (a loaded
	// machine, -race): choose again until a Set made while another node
	// led was forwarded. A Set that is never forwarded fails the test.
	var key string
	testutil.Eventually(t, 30*time.Second, "a forwarded Set on n0 of a key whose group another node leads", func() bool {
		key = ""
		for i := range 1000 {
			if l := leaderOfKey(fmt.Sprint("key", i)); l > 0 {
				key = fmt.Sprint("key", i)
				break
			}
		}
		if key == "" {
			return false
		}
		fwd0 := nodes[0].fwd.writes.Load()
		if err := nodes[0].Set(ctx, key, []byte("v")); err != nil {
			t.Fatal(err)
		}
		return nodes[0].fwd.writes.Load() > fwd0
	})
	for i := range 30 {
		if err := nodes[i%3].Set(ctx, fmt.Sprint("k", i), []byte("value")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[1].Incr(ctx, "counter", 2); err != nil {
		t.Fatal(err)
	}
	if ok, err := nodes[2].CompareAndSwap(ctx, "lock", nil, []byte("me")); err != nil || !ok {
		t.Fatalf("CompareAndSwap: %v %v", ok, err)
	}
	if err := nodes[0].Delete(ctx, "k0"); err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]ReadOption{{ReadIndex()}, {Quorum(2)}, {Stale()}} {
		if _, err := nodes[0].Get(ctx, key, opts...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodes[0].Get(ctx, "k0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a deleted key: %v", err)
	}
	for _, err := range nodes[1].Scan(ctx, "k", Limit(5)) {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Lease reads: on the key's leader, until one is served under the
	// lease (a new leader's lease starts with its first committed entry).
	// A write there first, so that the leader checked below proposed an
	// entry itself; the read must add a hit on that node. The round counts
	// only if that node led the key's group in one term throughout: the
	// leader may move on a loaded machine. l is that node, the one whose
	// leader metrics are checked below.
	l := -1
	testutil.Eventually(t, 30*time.Second, "a write and a read served under the lease by the key's leader in one term", func() bool {
		c := leaderOfKey(key)
		if c < 0 {
			return false
		}
		rep := nodes[c].replica(groupOf(nodes[c], key))
		term := rep.group.Raft().CurrentTerm()
		if !rep.group.IsLeader() {
			return false
		}
		if err := nodes[c].Set(ctx, key, []byte("v")); err != nil {
			t.Fatal(err)
		}
		hit := map[string]string{"result": "hit"}
		hits0, _ := sample(gather(t, regs[c]), "gridkv_raft_lease_reads_total", hit)
		if _, err := nodes[c].Get(ctx, key); err != nil {
			t.Fatal(err)
		}
		if !rep.group.IsLeader() || rep.group.Raft().CurrentTerm() != term {
			return false
		}
		if hits, _ := sample(gather(t, regs[c]), "gridkv_raft_lease_reads_total", hit); hits > hits0 {
			l = c
		}
		return l >= 0
	})

	families := make([][]*dto.MetricFamily, 3)
	for i, reg := range regs {
		families[i] = gather(t, reg)
		for _, f := range families[i] {
			for _, m := range f.GetMetric() {
				if !hasLabel(m, "node", nodes[i].NodeID()) {
					t.Errorf("node %d: %s has no node label %q: %v", i, f.GetName(), nodes[i].NodeID(), m.GetLabel())
				}
			}
		}
		problems, err := promtest.GatherAndLint(reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	type check struct {
		node   int
		name   string
		labels map[string]string
	}
	checks := []check{
		{0, "gridkv_operations_total", map[string]string{"kind": "set", "result": "ok", "path": "none"}},
		{0, "gridkv_operation_duration_seconds", map[string]string{"kind": "set", "result": "ok", "path": "none"}},
		{0, "gridkv_operations_total", map[string]string{"kind": "delete", "result": "ok"}},
		{0, "gridkv_operations_total", map[string]string{"kind": "get", "result": "ok", "path": "readindex"}},
		{0, "gridkv_operations_total", map[string]string{"kind": "get", "result": "ok", "path": "quorum"}},
		{0, "gridkv_operations_total", map[string]string{"kind": "get", "result": "ok", "path": "stale"}},
		{0, "gridkv_operations_total", map[string]string{"kind": "get", "result": "not_found", "path": "lease"}},
		{0, "gridkv_operation_duration_seconds", map[string]string{"kind": "get", "path": "quorum"}},
		{l, "gridkv_operations_total", map[string]string{"kind": "get", "result": "ok", "path": "lease"}},
		{l, "gridkv_operation_duration_seconds", map[string]string{"kind": "get", "result": "ok", "path": "lease"}},
		{1, "gridkv_operations_total", map[string]string{"kind": "incr", "result": "ok"}},
		{1, "gridkv_operations_total", map[string]string{"kind": "scan", "result": "ok", "path": "lease"}},
		{2, "gridkv_operations_total", map[string]string{"kind": "cas", "result": "ok"}},
		{0, "gridkv_forwarded_operations_total", map[string]string{"kind": "write"}},
		{0, "gridkv_forwarded_frames_total", map[string]string{"kind": "write"}},
		{l, "gridkv_raft_applies_total", nil},
		{l, "gridkv_raft_operations_per_entry", nil},
		{l, "gridkv_raft_entries_per_append", nil},
		{l, "gridkv_raft_lease_reads_total", map[string]string{"result": "hit"}},
		{0, "gridkv_membership_events_total", map[string]string{"event": "join"}},
	}
	for i := range nodes {
		checks = append(checks,
			check{i, "gridkv_raft_commits_total", nil},
			check{i, "gridkv_raft_leader_changes_total", nil},
			check{i, "gridkv_transport_frames_per_write", nil},
			check{i, "gridkv_groups_held", nil},
			check{i, "gridkv_ranges_held", nil},
			check{i, "gridkv_memory_used_bytes", nil},
			check{i, "gridkv_memory_limit_bytes", nil})
		// Per peer: the other two nodes, by address.
		for j, peer := range nodes {
			if j == i {
				continue
			}
			p := map[string]string{"peer": peer.host.Addr()}
			checks = append(checks,
				check{i, "gridkv_transport_sent_frames_total", p},
				check{i, "gridkv_transport_received_frames_total", p},
				check{i, "gridkv_transport_sent_bytes_total", p},
				check{i, "gridkv_transport_received_bytes_total", p})
		}
	}
	for _, c := range checks {
		if v, found := sample(families[c.node], c.name, c.labels); !found || v <= 0 {
			t.Errorf("node %d: %s%v = %v (found %v), want > 0", c.node, c.name, c.labels, v, found)
		}
	}
	for i := range nodes {
		if v, _ := sample(families[i], "gridkv_memory_limit_bytes", nil); v > memoryLimit {
			t.Errorf("node %d: memory limit %v above MemoryLimit %d", i, v, memoryLimit)
		}
		if n, _ := sample(families[i], "gridkv_groups_held", nil); n != float64(nodes[i].groupCount()) {
			t.Errorf("node %d: holds %v groups, want all %d (3 replicas, 3 nodes)", i, n, nodes[i].groupCount())
		}
	}
	// The led groups and ranges add up to every group and range once
	// leadership is stable (who leads what may move meanwhile: the sums
	// over the nodes, not one node's gauges).
	testutil.Eventually(t, 10*time.Second, "the led groups and ranges to add up to the groups and Ranges", func() bool {
		var groups, ranges float64
		for _, reg := range regs {
			f := gather(t, reg)
			v, _ := sample(f, "gridkv_groups_led", nil)
			groups += v
			v, _ = sample(f, "gridkv_ranges_led", nil)
			ranges += v
		}
		return groups == float64(nodes[0].groupCount()) && ranges == float64(nodes[0].cfg.Ranges)
	})
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestMetricsRegistration: two nodes share a registry under their node
// labels; a third with a NodeID already registered there fails Open with
// ErrInvalid, and once the first closes (unregistering), a node of its
// NodeID opens on the registry again.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	open := func(id string) (*DB, error) {
		db, err := Open(Config{NodeID: id, Logger: quiet, Timing: LocalTiming(), Metrics: reg})
		if err == nil {
			t.Cleanup(func() { db.Close() })
		}
		return db, err
	}
	a, err := open("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open("b"); err != nil {
		t.Fatal("a second node in the same registry:", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, _ := sample(gather(t, reg), "gridkv_operations_total", map[string]string{"node": "a", "kind": "set"}); v != 1 {
		t.Fatalf("node a's Sets: %v, want 1", v)
	}
	if v, found := sample(gather(t, reg), "gridkv_operations_total", map[string]string{"node": "b"}); found {
		t.Fatalf("node b counted %v operations it never ran", v)
	}
	_, err = open("a")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "Metrics") || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("a node of a registered NodeID: %v, want ErrInvalid naming Metrics and the node", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, found := sample(gather(t, reg), "gridkv_groups_held", map[string]string{"node": "a"}); found {
		t.Fatal("a closed node's metrics are still registered")
	}
	if _, err := open("a"); err != nil {
		t.Fatal("reopening a closed node on its registry:", err)
	}
	if _, found := sample(gather(t, reg), "gridkv_groups_held", map[string]string{"node": "a"}); !found {
		t.Fatal("the reopened node's metrics are not registered")
	}
}

// TestMetricsPeerLabelNotUTF8: a peer address that is not valid UTF-8
// loses its own series only; the scrape neither panics nor fails.
func TestMetricsPeerLabelNotUTF8(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(nil, Config{NodeID: "n1", Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan prometheus.Metric, 16)
	m.collectPeers(ch, []raftgroup.PeerStats{
		{Addr: "\xff\xfe:1", FramesWritten: 1, FramesRead: 1, BytesWritten: 1, BytesRead: 1},
		{Addr: "127.0.0.1:7000", FramesWritten: 2, FramesRead: 2, BytesWritten: 2, BytesRead: 2},
	})
	close(ch)
	n := 0
	for c := range ch {
		var d dto.Metric
		if err := c.Write(&d); err != nil {
			t.Fatal(err)
		}
		if v := d.GetLabel()[0].GetValue(); v != "127.0.0.1:7000" {
			t.Fatalf("series with peer %q", v)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("%d series, want the good peer's 4", n)
	}
}
