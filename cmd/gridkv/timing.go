package main

import (
	"reflect"
	"strings"
	"time"
	"unicode"

	"github.com/gridkv/gridkv/gridkv"
)

// timingUsage says what each duration of gridkv.Timing bounds, for -h
// (gridkv's godoc says it at length). A Timing field missing here fails
// TestEveryTimingHasAFlag.
var timingUsage = map[string]string{
	"HeartbeatTimeout":   "how long a Raft follower hears nothing before it starts an election; the same on every node",
	"ElectionTimeout":    "how long a Raft candidate waits for votes; at least the heartbeat timeout, which it follows when only that is given",
	"LeaderLeaseTimeout": "how long a Raft leader goes without a quorum before it steps down; at most the heartbeat timeout, which it follows when only that is given",
	"CommitTimeout":      "how long an idle Raft leader waits before resending the commit index",
	"RPCTimeout":         "bound on one Raft RPC, a connection attempt, and a node-to-node request",
	"MemberDelay":        "a member counts in placement once up this long, and until gone this long",
	"ReconcileInterval":  "how often group leaders move replicas toward the placement target",
	"StepTimeout":        "bound on one configuration change of the reconciler",
	"RequestTimeout":     "bound on one request of a background task (handoff step, watch poll)",
	"ApplyTimeout":       "how long a batch of writes waits to commit and apply",
	"HandoffTimeout":     "how long a range handoff may take before its source takes the range back",
	"HandoffPoll":        "how often the handoff loop looks for work",
	"DrainTimeout":       "how long Close waits for this node's replicas to be re-replicated onto the members that stay",
	"LeaveTimeout":       "how long Close then takes the replicas left out of their groups before leaving anyway",
}

// timingFields names gridkv.Timing's duration fields, in order.
func timingFields() []string {
	var out []string
	typ := reflect.TypeFor[gridkv.Timing]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.Type == reflect.TypeFor[time.Duration]() {
			out = append(out, f.Name)
		}
	}
	return out
}

// timingSettings is a -timing-* flag per duration of gridkv.Timing, each
// changing that one timing of the -timing preset.
func timingSettings() []setting {
	lan, local := reflect.ValueOf(gridkv.LANTiming()), reflect.ValueOf(gridkv.LocalTiming())
	var out []setting
	for _, name := range timingFields() {
		out = append(out, setting{
			flag: "timing-" + kebab(name), field: "Timing", arg: "duration",
			def:   "lan " + lan.FieldByName(name).Interface().(time.Duration).String() + ", local " + local.FieldByName(name).Interface().(time.Duration).String(),
			usage: timingUsage[name],
			set: func(o *options, v string) error {
				var d time.Duration
				if err := setDuration(&d, v); err != nil {
					return err
				}
				reflect.ValueOf(&o.timings).Elem().FieldByName(name).Set(reflect.ValueOf(d))
				return nil
			},
		})
	}
	return out
}

// kebab turns a Go field name into a flag name: HeartbeatTimeout is
// heartbeat-timeout, RPCTimeout rpc-timeout.
func kebab(name string) string {
	var b strings.Builder
	r := []rune(name)
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 && (unicode.IsLower(r[i-1]) || i+1 < len(r) && unicode.IsLower(r[i+1])) {
			b.WriteByte('-')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}
