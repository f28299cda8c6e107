package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testcerts"
)

var noEnv []string

// envOf is m as os.Environ would list it.
func envOf(m map[string]string) []string {
	var env []string
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return env
}

// Every gridkv.Config field is set by a setting or listed in
// handledElsewhere, and every setting names a real field: a field added
// to Config without a flag fails here.
func TestEveryConfigFieldHasASetting(t *testing.T) {
	mapped := map[string]bool{}
	for _, s := range settings() {
		if s.field == "" {
			continue
		}
		if _, ok := reflect.TypeFor[gridkv.Config]().FieldByName(s.field); !ok {
			t.Errorf("flag -%s sets field %s, which gridkv.Config does not have", s.flag, s.field)
		}
		mapped[s.field] = true
	}
	typ := reflect.TypeFor[gridkv.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		_, elsewhere := handledElsewhere[f.Name]
		if !mapped[f.Name] && !elsewhere {
			t.Errorf("gridkv.Config.%s has no flag: add a row to settings() (or to handledElsewhere, saying why)", f.Name)
		}
		if mapped[f.Name] && elsewhere {
			t.Errorf("gridkv.Config.%s has a flag and is in handledElsewhere", f.Name)
		}
	}
}

// allFlags sets every setting to a value other than its default; want is
// the Config it gives.
func allFlags(t *testing.T) (args []string, want options) {
	dir := t.TempDir()
	certFile, keyFile, caFile := testcerts.NewCA(t, "test CA").WriteFiles(t, dir, "n7")
	gossipKeyFile := filepath.Join(dir, "gossip.key")
	key := bytes.Repeat([]byte{7}, 32)
	if err := os.WriteFile(gossipKeyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args = []string{
		"-node-id", "n7",
		"-bind-addr", "127.0.0.1:7000",
		"-gossip-addr", "127.0.0.1:7100",
		"-advertise-addr", "10.0.0.7:7000",
		"-gossip-advertise-addr", "10.0.0.7:7100",
		"-gossip-key", "000102030405060708090a0b0c0d0e0f", // overridden by the file below
		"-gossip-key-file", gossipKeyFile,
		"-seeds", "10.0.0.1:7100, 10.0.0.2:7100",
		"-replica-count", "5",
		"-ranges", "4096",
		"-groups-per-node", "2",
		"-max-value-bytes", "2MiB",
		"-memory-limit", "3GiB",
		"-bootstrap-expect", "3",
		"-join-timeout", "1m",
		"-timing", "local",
		"-tls-cert", certFile,
		"-tls-key", keyFile,
		"-tls-ca", caFile,
		"-log-level", "debug",
		"-log-format", "json",
		"-resp-addr", ":6380",
		"-admin-addr", "",
		"-request-timeout", "2s",
	}
	want = options{
		cfg: gridkv.Config{
			NodeID: "n7", BindAddr: "127.0.0.1:7000", GossipAddr: "127.0.0.1:7100",
			AdvertiseAddr: "10.0.0.7:7000", GossipAdvertiseAddr: "10.0.0.7:7100", GossipKey: key,
			Seeds: []string{"10.0.0.1:7100", "10.0.0.2:7100"}, ReplicaCount: 5, Ranges: 4096, GroupsPerNode: 2,
			MaxValueBytes: 2 << 20, MemoryLimit: 3 << 30, BootstrapExpect: 3, JoinTimeout: time.Minute,
			Timing: gridkv.LocalTiming(),
		},
		respAddr: ":6380", adminAddr: "", requestTimeout: 2 * time.Second, logLevel: slog.LevelDebug, logFormat: "json",
		timing: "local", tlsCert: certFile, tlsKey: keyFile, tlsCA: caFile,
	}
	// Every -timing-* flag, each to a value no preset has: cfg.Timing is
	// the preset with those.
	for i, name := range timingFields() {
		d := time.Duration(i+1) * 7 * time.Second
		args = append(args, "-timing-"+kebab(name), d.String())
		reflect.ValueOf(&want.timings).Elem().FieldByName(name).Set(reflect.ValueOf(d))
		reflect.ValueOf(&want.cfg.Timing).Elem().FieldByName(name).Set(reflect.ValueOf(d))
	}
	return args, want
}

// One flag per setting, each to a value other than its default: every
// Config field a setting maps comes out set (non-zero), to the value
// given.
func TestFlagsSetEveryField(t *testing.T) {
	args, want := allFlags(t)
	for _, s := range settings() {
		if !slices.Contains(args, "-"+s.flag) {
			t.Errorf("the test does not set -%s", s.flag)
		}
	}
	o, err := parseOptions(args, noEnv, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	checkOptions(t, "parsed", o, want)
	v := reflect.ValueOf(o.cfg)
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		if _, ok := handledElsewhere[name]; ok || name == "Logger" { // Logger: built by run from -log-*
			continue
		}
		if f.IsZero() {
			t.Errorf("gridkv.Config.%s is still zero after every flag", name)
		}
	}
}

// The environment sets what the flags do; a flag wins over its variable.
func TestEnvAndFlagPrecedence(t *testing.T) {
	args, want := allFlags(t)
	env := map[string]string{}
	for i := 0; i < len(args); i++ {
		name := strings.TrimPrefix(args[i], "-")
		env[envName(name)] = args[i+1]
		i++
	}
	o, err := parseOptions(nil, envOf(env), new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	checkOptions(t, "from the environment", o, want)

	o, err = parseOptions([]string{"-node-id", "flag", "-seeds", "127.0.0.1:1", "-timing", "lan", "-ranges", "8"},
		envOf(map[string]string{"GRIDKV_NODE_ID": "env", "GRIDKV_SEEDS": "127.0.0.1:2,127.0.0.1:3", "GRIDKV_TIMING": "local",
			"GRIDKV_REPLICA_COUNT": "1"}), new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.NodeID != "flag" || !slices.Equal(o.cfg.Seeds, []string{"127.0.0.1:1"}) || o.cfg.Timing != gridkv.LANTiming() || o.cfg.Ranges != 8 || o.cfg.ReplicaCount != 1 {
		t.Errorf("flags over env: %+v", o.cfg)
	}
	if o.respAddr != "127.0.0.1:6379" || o.adminAddr != "127.0.0.1:0" || o.requestTimeout != 5*time.Second || o.logFormat != "text" {
		t.Errorf("program defaults: %+v", o)
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"-ranges", "x"}, want: `invalid value "x" for flag -ranges: not an integer`},
		{args: []string{"-join-timeout", "5"}, want: "not a duration"},
		{args: []string{"-memory-limit", "1TB"}, want: "not a byte count"},
		{args: []string{"-gossip-key", "zz!"}, want: "not hex or base64"},
		{args: []string{"-gossip-key-file", "/nonexistent"}, want: "no such file"},
		{args: []string{"-log-level", "loud"}, want: "-log-level"},
		{args: []string{"-log-format", "xml"}, want: "want text or json"},
		{args: []string{"-timing", "wan"}, want: "want lan or local"},
		{args: []string{"-timing-heartbeat-timeout", "1"}, want: "not a duration"},
		{args: []string{"-tls-cert", "a.crt"}, want: "give all three or none"},
		{args: []string{"-tls-cert", "/nonexistent.crt", "-tls-key", "/nonexistent.key", "-tls-ca", "/nonexistent.ca"}, want: "-tls-cert/-tls-key"},
		{args: []string{"-nope"}, want: "flag provided but not defined: -nope"},
		{args: []string{"extra"}, want: "unexpected arguments"},
		{env: map[string]string{"GRIDKV_RANGES": "x", "GRIDKV_TIMING": "wan"},
			want: `env GRIDKV_RANGES="x": not an integer` + "\n" + `env GRIDKV_TIMING="wan"`},
		// A variable that names no setting (a typo, or one removed) is
		// refused, not ignored; variables without the prefix are not ours.
		{env: map[string]string{"GRIDKV_TIMEING": "local", "GRIDKV_FAST": "true", "GRIDKV_RANGES": "8", "HOME": "/root"},
			want: "env GRIDKV_FAST: no such setting (gridkv -h lists them)\nenv GRIDKV_TIMEING: no such setting"},
	} {
		_, err := parseOptions(tc.args, envOf(tc.env), new(bytes.Buffer))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
}

// -h documents every flag with its default and its variable.
func TestUsage(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseOptions([]string{"-h"}, noEnv, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, s := range settings() {
		line := "  -" + s.flag
		if s.arg != "" {
			line += " " + s.arg
		}
		if !strings.Contains(out.String(), line+"\n    \t"+s.usage+" (default "+s.def+"; env "+envName(s.flag)+")\n") {
			t.Errorf("-h lacks -%s with its default and env: %s", s.flag, out.String())
		}
	}
	if envName("gossip-advertise-addr") != "GRIDKV_GOSSIP_ADVERTISE_ADDR" {
		t.Errorf("envName = %s", envName("gossip-advertise-addr"))
	}
}

// checkOptions compares parsed options with want, whose cfg.TLS is nil:
// parsed ones must hold the -tls-* files' certificate, key and CA, which
// reflect.DeepEqual cannot compare (a CertPool holds functions).
func checkOptions(t *testing.T, what string, o, want options) {
	t.Helper()
	if c := o.cfg.TLS; c == nil || len(c.Certificates) != 1 || c.Certificates[0].PrivateKey == nil || c.RootCAs == nil || c.ClientCAs == nil {
		t.Errorf("%s: TLS %+v, want the -tls-* files' certificate, key and CA", what, c)
	}
	o.cfg.TLS = nil
	if !reflect.DeepEqual(o, want) {
		t.Errorf("%s\n%+v\nwant\n%+v", what, o, want)
	}
}

// Every duration of gridkv.Timing has a -timing-* flag with a usage line.
func TestEveryTimingHasAFlag(t *testing.T) {
	flags := map[string]bool{}
	for _, s := range timingSettings() {
		flags[s.flag] = true
		if s.usage == "" {
			t.Errorf("-%s has no usage: add it to timingUsage", s.flag)
		}
	}
	for _, name := range timingFields() {
		if !flags["timing-"+kebab(name)] {
			t.Errorf("gridkv.Timing.%s has no flag", name)
		}
	}
	if got := kebab("RPCTimeout"); got != "rpc-timeout" {
		t.Errorf("kebab(RPCTimeout) = %q", got)
	}
}

// -timing-heartbeat-timeout alone moves Raft's election and leader lease
// timeouts with it, from either preset, so Raft accepts the result; one
// given too stays.
func TestTimingHeartbeatAlone(t *testing.T) {
	s, ms := time.Second, time.Millisecond
	for _, c := range []struct {
		args            []string
		env             map[string]string
		election, lease time.Duration
	}{
		{args: []string{"-timing", "local", "-timing-heartbeat-timeout", "1s"}, election: s, lease: s},
		{args: []string{"-timing-heartbeat-timeout", "3s"}, election: 3 * s, lease: 3 * s},
		{args: []string{"-timing-heartbeat-timeout", "500ms"}, election: 500 * ms, lease: 500 * ms},
		{args: []string{"-timing", "local", "-timing-heartbeat-timeout", "1s", "-timing-election-timeout", "2s"}, election: 2 * s, lease: s},
		{args: []string{"-timing-heartbeat-timeout", "500ms", "-timing-leader-lease-timeout", "200ms"}, election: 500 * ms, lease: 200 * ms},
		{args: []string{"-timing", "local"}, env: map[string]string{"GRIDKV_TIMING_HEARTBEAT_TIMEOUT": "1s"}, election: s, lease: s},
		{args: []string{"-timing", "local"}, election: 300 * ms, lease: 300 * ms},
	} {
		var env []string
		for k, v := range c.env {
			env = append(env, k+"="+v)
		}
		o, err := parseOptions(c.args, env, new(bytes.Buffer))
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		tm := o.cfg.Timing
		if tm.ElectionTimeout != c.election || tm.LeaderLeaseTimeout != c.lease {
			t.Errorf("%q %v: election %v, leader lease %v; want %v, %v", c.args, c.env, tm.ElectionTimeout, tm.LeaderLeaseTimeout, c.election, c.lease)
		}
		if tm.ElectionTimeout < tm.HeartbeatTimeout || tm.LeaderLeaseTimeout > tm.HeartbeatTimeout {
			t.Errorf("%q %v: %+v breaks Raft's rules", c.args, c.env, tm)
		}
	}
}

// run refuses an unknown GRIDKV_ variable as it does a bad flag: exit
// status 2, the variable named, and nothing started.
func TestRunRefusesUnknownEnv(t *testing.T) {
	if _, err := parseOptions(nil, []string{"GRIDKV_REQUIRE_REDIS_TOOLS=1", "GRIDKV_JEPSEN_SEED=7"}, new(bytes.Buffer)); err != nil {
		t.Errorf("the tests' own variables: %v", err)
	}
	var out bytes.Buffer
	code := run(context.Background(), []string{"-resp-addr", "127.0.0.1:0"}, []string{"PATH=/bin", "GRIDKV_FAST=true"}, &out)
	if code != 2 || !strings.Contains(out.String(), "gridkv: env GRIDKV_FAST: no such setting") {
		t.Errorf("run with GRIDKV_FAST set: exit %d, %q", code, out.String())
	}
}
