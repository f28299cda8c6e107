package gridkv

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gossip"
)

// The zero Config takes LANTiming, field by field; LocalTiming is today's
// faster preset; JoinTimeout stays a Config field of its own.
func TestConfigTimingDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Timing != LANTiming() {
		t.Errorf("zero Timing filled to %+v, want LANTiming %+v", c.Timing, LANTiming())
	}
	if c.JoinTimeout != 30*time.Second {
		t.Errorf("JoinTimeout %v, want 30s", c.JoinTimeout)
	}
	c, err = Config{Timing: LocalTiming()}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Timing != LocalTiming() {
		t.Errorf("LocalTiming filled to %+v, want it unchanged", c.Timing)
	}
}

// The presets' values, as documented on each field.
func TestConfigTimingPresets(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		got  Timing
		want Timing
	}{
		{"LAN", LANTiming(), Timing{
			HeartbeatTimeout: time.Second, ElectionTimeout: time.Second, LeaderLeaseTimeout: time.Second,
			CommitTimeout: time.Second, RPCTimeout: 5 * time.Second, Gossip: GossipLAN,
			MemberDelay: time.Second, ReconcileInterval: 250 * ms, StepTimeout: 5 * time.Second,
			RequestTimeout: 2 * time.Second, ApplyTimeout: 10 * time.Second,
			HandoffTimeout: 30 * time.Second, HandoffPoll: 100 * ms, DrainTimeout: 30 * time.Second, LeaveTimeout: 5 * time.Second,
		}},
		{"Local", LocalTiming(), Timing{
			HeartbeatTimeout: 300 * ms, ElectionTimeout: 300 * ms, LeaderLeaseTimeout: 300 * ms,
			CommitTimeout: 20 * ms, RPCTimeout: time.Second, Gossip: GossipLocal,
			MemberDelay: 250 * ms, ReconcileInterval: 250 * ms, StepTimeout: 5 * time.Second,
			RequestTimeout: 2 * time.Second, ApplyTimeout: 10 * time.Second,
			HandoffTimeout: 10 * time.Second, HandoffPoll: 25 * ms, DrainTimeout: 10 * time.Second, LeaveTimeout: 5 * time.Second,
		}},
	} {
		if c.got != c.want {
			t.Errorf("%s: %+v\nwant %+v", c.name, c.got, c.want)
		}
		if p := c.got.problems(); p != nil {
			t.Errorf("%s is invalid: %v", c.name, p)
		}
	}
	if GossipLAN.gossipPreset() != gossip.LAN || GossipLocal.gossipPreset() != gossip.Local {
		t.Error("GossipLAN and GossipLocal do not map to gossip.LAN and gossip.Local")
	}
}

// A zero field of a partly set Timing takes LANTiming's value; the set
// ones stay.
func TestConfigTimingPartial(t *testing.T) {
	c, err := Config{Timing: Timing{MemberDelay: time.Minute, CommitTimeout: 20 * time.Millisecond, Gossip: GossipLocal}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := LANTiming()
	want.MemberDelay, want.CommitTimeout, want.Gossip = time.Minute, 20*time.Millisecond, GossipLocal
	if c.Timing != want {
		t.Errorf("filled to %+v\nwant %+v", c.Timing, want)
	}

	local := LocalTiming()
	local.HandoffTimeout = 0 // a zero field of a preset is LAN's too
	c, err = Config{Timing: local}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Timing.HandoffTimeout != 30*time.Second || c.Timing.HeartbeatTimeout != 300*time.Millisecond {
		t.Errorf("LocalTiming without HandoffTimeout filled to %+v", c.Timing)
	}
}

// A zero ElectionTimeout or LeaderLeaseTimeout follows HeartbeatTimeout
// (as in both presets), not LANTiming's 1s, so changing HeartbeatTimeout
// alone is valid; one set stays.
func TestConfigTimingFollowsHeartbeat(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	for _, c := range []struct {
		name            string
		timing          Timing
		election, lease time.Duration
	}{
		{"longer heartbeat", Timing{HeartbeatTimeout: 3 * s}, 3 * s, 3 * s},
		{"shorter heartbeat", Timing{HeartbeatTimeout: 500 * ms}, 500 * ms, 500 * ms},
		{"election set", Timing{HeartbeatTimeout: 3 * s, ElectionTimeout: 5 * s}, 5 * s, 3 * s},
		{"lease set", Timing{HeartbeatTimeout: 500 * ms, LeaderLeaseTimeout: 250 * ms}, 500 * ms, 250 * ms},
		{"heartbeat zero", Timing{ElectionTimeout: 2 * s}, 2 * s, s},
		{"preset with both zeroed", func() Timing {
			t := LocalTiming()
			t.HeartbeatTimeout, t.ElectionTimeout, t.LeaderLeaseTimeout = s, 0, 0
			return t
		}(), s, s},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Config{Timing: c.timing}.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Timing.ElectionTimeout != c.election || cfg.Timing.LeaderLeaseTimeout != c.lease {
				t.Errorf("ElectionTimeout %v, LeaderLeaseTimeout %v; want %v, %v",
					cfg.Timing.ElectionTimeout, cfg.Timing.LeaderLeaseTimeout, c.election, c.lease)
			}
		})
	}
}

// Bad timings are ErrInvalid naming each field, with every other problem
// of the config, on one line.
func TestConfigTimingInvalid(t *testing.T) {
	for _, c := range []struct {
		name   string
		timing Timing
		want   []string
	}{
		{"negative", Timing{MemberDelay: -1, HandoffPoll: -time.Second, ApplyTimeout: -time.Millisecond},
			[]string{"Timing.MemberDelay -1ns < 0", "Timing.HandoffPoll -1s < 0", "Timing.ApplyTimeout -1ms < 0"}},
		{"election below heartbeat", Timing{HeartbeatTimeout: 2 * time.Second, ElectionTimeout: 1500 * time.Millisecond},
			[]string{"Timing.ElectionTimeout 1.5s < Timing.HeartbeatTimeout 2s"}},
		{"election below a preset's heartbeat", func() Timing { t := LocalTiming(); t.HeartbeatTimeout = time.Second; return t }(),
			[]string{"Timing.ElectionTimeout 300ms < Timing.HeartbeatTimeout 1s"}},
		{"lease above heartbeat", Timing{HeartbeatTimeout: 500 * time.Millisecond, LeaderLeaseTimeout: 600 * time.Millisecond},
			[]string{"Timing.LeaderLeaseTimeout 600ms > Timing.HeartbeatTimeout 500ms"}},
		{"below Raft's least", Timing{HeartbeatTimeout: time.Millisecond, ElectionTimeout: time.Millisecond,
			LeaderLeaseTimeout: time.Millisecond, CommitTimeout: time.Microsecond},
			[]string{"Timing.HeartbeatTimeout 1ms < 5ms", "Timing.ElectionTimeout 1ms < 5ms",
				"Timing.LeaderLeaseTimeout 1ms < 5ms", "Timing.CommitTimeout 1µs < 1ms"}},
		{"unknown gossip preset", Timing{Gossip: 7}, []string{"Timing.Gossip GossipPreset(7)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Config{Timing: c.timing, JoinTimeout: -time.Second, ReplicaCount: -1}.withDefaults()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("withDefaults: %v, want ErrInvalid", err)
			}
			requireOneLine(t, err)
			for _, w := range append(c.want, "JoinTimeout -1s < 0", "ReplicaCount") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v\nwant it to say %q", err, w)
				}
			}
		})
	}
}

// Of the timings, only HeartbeatTimeout must be the same on every node.
func TestConfigClusterSettingsTiming(t *testing.T) {
	settings := func(tm Timing) map[string]string {
		c, err := Config{Timing: tm}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, s := range c.clusterSettings() {
			m[s.Name] = s.Value
		}
		return m
	}
	lan, local := settings(Timing{}), settings(LocalTiming())
	if lan["Timing.HeartbeatTimeout"] != "1s" || local["Timing.HeartbeatTimeout"] != "300ms" {
		t.Errorf("HeartbeatTimeout settings: LAN %q, Local %q", lan["Timing.HeartbeatTimeout"], local["Timing.HeartbeatTimeout"])
	}
	perNode := LANTiming()
	perNode.ElectionTimeout, perNode.CommitTimeout, perNode.Gossip, perNode.MemberDelay = 3*time.Second, time.Millisecond, GossipLocal, time.Minute
	other := settings(perNode)
	if len(other) != len(lan) {
		t.Fatalf("settings %v vs %v", other, lan)
	}
	for k, v := range lan {
		if other[k] != v {
			t.Errorf("setting %s is %q with per-node timings changed, %q without", k, other[k], v)
		}
	}
}
