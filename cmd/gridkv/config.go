package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// options is what the command line and the environment say: the node's
// gridkv.Config and the program's own settings.
type options struct {
	cfg            gridkv.Config
	respAddr       string
	adminAddr      string
	requestTimeout time.Duration
	logLevel       slog.Level
	logFormat      string
	// timing is the -timing preset, and timings the -timing-* flags given
	// (zero: the preset's); finish makes cfg.Timing of them.
	timing  string
	timings gridkv.Timing
	// tlsCert, tlsKey, tlsCA: the -tls-* files; finish loads them into
	// cfg.TLS.
	tlsCert, tlsKey, tlsCA string
}

func defaultOptions() options {
	return options{respAddr: "127.0.0.1:6379", adminAddr: "127.0.0.1:0", requestTimeout: 5 * time.Second, logFormat: "text",
		timing: "lan"}
}

// setting is one flag, and the environment variable of the same name
// (envName). Every gridkv.Config field is set by one or more settings,
// named in field; the program's own settings have field "". Adding a
// Config field means adding a row here (a test checks that each field has
// one, or is listed in handledElsewhere).
type setting struct {
	flag   string
	field  string // the gridkv.Config field it sets, or ""
	arg    string // what the value is, for -h; "" for a bool
	def    string // the default, for -h
	usage  string
	set    func(o *options, v string) error
	isBool bool
}

// handledElsewhere lists the gridkv.Config fields no setting sets, and
// why.
var handledElsewhere = map[string]string{
	"Metrics": "the admin endpoint's registry (-admin-addr): /metrics serves it",
}

func settings() []setting {
	return append(baseSettings(), timingSettings()...)
}

func baseSettings() []setting {
	return []setting{
		{flag: "node-id", field: "NodeID", arg: "id", def: "random", usage: "node id, unique among the live members; keep it across restarts",
			set: func(o *options, v string) error { o.cfg.NodeID = v; return nil }},
		{flag: "bind-addr", field: "BindAddr", arg: "host:port", def: "127.0.0.1:0", usage: "TCP address for Raft and node-to-node RPC",
			set: func(o *options, v string) error { o.cfg.BindAddr = v; return nil }},
		{flag: "gossip-addr", field: "GossipAddr", arg: "host:port", def: "127.0.0.1:0", usage: "gossip address (TCP and UDP); give it to other nodes as a seed",
			set: func(o *options, v string) error { o.cfg.GossipAddr = v; return nil }},
		{flag: "advertise-addr", field: "AdvertiseAddr", arg: "host:port", def: "the bound bind-addr", usage: "address other nodes dial for bind-addr (NAT, containers)",
			set: func(o *options, v string) error { o.cfg.AdvertiseAddr = v; return nil }},
		{flag: "gossip-advertise-addr", field: "GossipAdvertiseAddr", arg: "ip:port", def: "the bound gossip-addr", usage: "address other nodes gossip with",
			set: func(o *options, v string) error { o.cfg.GossipAdvertiseAddr = v; return nil }},
		{flag: "gossip-key", field: "GossipKey", arg: "key", def: "none", usage: "16, 24 or 32-byte key encrypting gossip, in hex or base64; the same on every node",
			set: func(o *options, v string) (err error) { o.cfg.GossipKey, err = parseKey(v); return err }},
		{flag: "gossip-key-file", field: "GossipKey", arg: "path", def: "none", usage: "file holding the gossip key (hex, base64, or the raw bytes)",
			set: func(o *options, v string) error {
				b, err := os.ReadFile(v)
				if err != nil {
					return err
				}
				o.cfg.GossipKey, err = parseKey(strings.TrimSpace(string(b)))
				if err != nil && (len(b) == 16 || len(b) == 24 || len(b) == 32) {
					o.cfg.GossipKey, err = b, nil
				}
				return err
			}},
		{flag: "seeds", field: "Seeds", arg: "host:port,...", def: "none: start a new cluster", usage: "gossip addresses of members to join, comma-separated",
			set: func(o *options, v string) error { o.cfg.Seeds = splitList(v); return nil }},
		{flag: "replica-count", field: "ReplicaCount", arg: "n", def: "3", usage: "replicas per replica group; the same on every node",
			set: func(o *options, v string) error { return setInt(&o.cfg.ReplicaCount, v) }},
		{flag: "ranges", field: "Ranges", arg: "n", def: "1024", usage: "hash ranges of the key space, fixed when the cluster is created; the same on every node",
			set: func(o *options, v string) error { return setInt(&o.cfg.Ranges, v) }},
		{flag: "groups-per-node", field: "GroupsPerNode", arg: "n", def: "1", usage: "replica groups (Raft groups) per node; the same on every node",
			set: func(o *options, v string) error { return setInt(&o.cfg.GroupsPerNode, v) }},
		{flag: "max-value-bytes", field: "MaxValueBytes", arg: "bytes", def: "1MiB", usage: "largest value accepted (a number, or with KiB, MiB or GiB)",
			set: func(o *options, v string) error {
				n, err := parseBytes(v)
				o.cfg.MaxValueBytes = int(n)
				return err
			}},
		{flag: "memory-limit", field: "MemoryLimit", arg: "bytes", def: "0: none", usage: "cap on bytes of keys and values in the cluster (KiB, MiB, GiB allowed); the same on every node",
			set: func(o *options, v string) (err error) { o.cfg.MemoryLimit, err = parseBytes(v); return err }},
		{flag: "bootstrap-expect", field: "BootstrapExpect", arg: "n", def: "0", usage: "nodes that start together and form the cluster as one (needs seeds)",
			set: func(o *options, v string) error { return setInt(&o.cfg.BootstrapExpect, v) }},
		{flag: "join-timeout", field: "JoinTimeout", arg: "duration", def: "30s", usage: "how long to try to reach a seed (and the expected nodes)",
			set: func(o *options, v string) error { return setDuration(&o.cfg.JoinTimeout, v) }},
		{flag: "timing", field: "Timing", arg: "preset", def: "lan", usage: "timing preset: lan, or local for nodes on one machine; the -timing-* flags change one timing of it",
			set: func(o *options, v string) error {
				if v != "lan" && v != "local" {
					return errors.New("want lan or local")
				}
				o.timing = v
				return nil
			}},
		{flag: "tls-cert", field: "TLS", arg: "path", def: "none: plaintext", usage: "PEM certificate this node presents to the others (mutual TLS between nodes; needs -tls-key and -tls-ca, on every node)",
			set: func(o *options, v string) error { o.tlsCert = v; return nil }},
		{flag: "tls-key", field: "TLS", arg: "path", def: "none", usage: "PEM private key of -tls-cert",
			set: func(o *options, v string) error { o.tlsKey = v; return nil }},
		{flag: "tls-ca", field: "TLS", arg: "path", def: "none", usage: "PEM certificates of the CAs that sign the nodes' certificates",
			set: func(o *options, v string) error { o.tlsCA = v; return nil }},
		{flag: "log-level", field: "Logger", arg: "level", def: "info", usage: "debug, info, warn or error",
			set: func(o *options, v string) error { return o.logLevel.UnmarshalText([]byte(v)) }},
		{flag: "log-format", field: "Logger", arg: "format", def: "text", usage: "text or json, on standard error",
			set: func(o *options, v string) error {
				if v != "text" && v != "json" {
					return errors.New("want text or json")
				}
				o.logFormat = v
				return nil
			}},
		{flag: "resp-addr", arg: "host:port", def: "127.0.0.1:6379", usage: "address of the Redis-protocol server",
			set: func(o *options, v string) error { o.respAddr = v; return nil }},
		{flag: "admin-addr", arg: "host:port", def: "127.0.0.1:0", usage: "address of the admin HTTP endpoint (/metrics, /status, /healthz, /readyz, /debug/pprof/, and POST /recover?group=N[&force=1] with header X-GridKV-Recover: 1); keep it on a trusted interface; empty: none",
			set: func(o *options, v string) error { o.adminAddr = v; return nil }},
		{flag: "request-timeout", arg: "duration", def: "5s", usage: "bound on each Redis-protocol command",
			set: func(o *options, v string) error { return setDuration(&o.requestTimeout, v) }},
	}
}

// envName is the environment variable of a flag: GRIDKV_ and the flag in
// upper snake case (-bind-addr: GRIDKV_BIND_ADDR).
func envName(flag string) string {
	return "GRIDKV_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parseOptions reads the environment (environ, in os.Environ's form:
// "NAME=value"), then args: a flag wins over its environment variable. A
// GRIDKV_ variable that names no setting is an error, so that a misspelt
// one is not silently ignored. Errors name the flag or variable. With -h
// it returns flag.ErrHelp, having written the usage to out.
// testKnob reports whether name is one of the variables this repository's
// tests and suite read (CI exports GRIDKV_REQUIRE_REDIS_TOOLS, for one): a
// node started in that environment must not refuse them as typos.
func testKnob(name string) bool {
	switch name {
	case "GRIDKV_REQUIRE_REDIS_TOOLS", "GRIDKV_RESTARTS", "GRIDKV_LOGCOUNT":
		return true
	}
	return strings.HasPrefix(name, "GRIDKV_JEPSEN_")
}

func parseOptions(args, environ []string, out io.Writer) (options, error) {
	o := defaultOptions()
	all := settings()
	known := map[string]bool{}
	for _, s := range all {
		known[envName(s.flag)] = true
	}
	env := map[string]string{}
	var errs []error
	for _, kv := range environ {
		name, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "GRIDKV_") {
			continue
		}
		if !known[name] && !testKnob(name) {
			errs = append(errs, fmt.Errorf("env %s: no such setting (gridkv -h lists them)", name))
			continue
		}
		if _, dup := env[name]; !dup { // the first wins, as with os.Getenv
			env[name] = v
		}
	}
	for _, s := range all {
		if v, ok := env[envName(s.flag)]; ok {
			if err := s.set(&o, v); err != nil {
				errs = append(errs, fmt.Errorf("env %s=%q: %v", envName(s.flag), v, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return o, err
	}
	fs := flag.NewFlagSet("gridkv", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { usage(out, all) }
	for _, s := range all {
		set := func(v string) error { return s.set(&o, v) }
		if s.isBool {
			fs.BoolFunc(s.flag, s.usage, func(v string) error { return set(v) })
		} else {
			fs.Func(s.flag, s.usage, set)
		}
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, o.finish()
}

// finish builds the Config fields several settings make: Timing from the
// preset and the -timing-* flags, TLS from the -tls-* files.
func (o *options) finish() error {
	o.cfg.Timing = gridkv.LANTiming()
	if o.timing == "local" {
		o.cfg.Timing = gridkv.LocalTiming()
	}
	given, timing := reflect.ValueOf(o.timings), reflect.ValueOf(&o.cfg.Timing).Elem()
	for _, f := range timingFields() {
		if d := given.FieldByName(f); !d.IsZero() {
			timing.FieldByName(f).Set(d)
		}
	}
	// As in both presets (and gridkv's rule for a zero field), Raft's
	// election and leader lease timeouts follow the heartbeat timeout
	// unless given too: -timing local -timing-heartbeat-timeout 1s would
	// otherwise keep local's 300ms election timeout, which Raft refuses.
	if hb := o.timings.HeartbeatTimeout; hb != 0 {
		if o.timings.ElectionTimeout == 0 {
			o.cfg.Timing.ElectionTimeout = hb
		}
		if o.timings.LeaderLeaseTimeout == 0 {
			o.cfg.Timing.LeaderLeaseTimeout = hb
		}
	}
	if o.tlsCert == "" && o.tlsKey == "" && o.tlsCA == "" {
		return nil
	}
	if o.tlsCert == "" || o.tlsKey == "" || o.tlsCA == "" {
		return errors.New("-tls-cert, -tls-key and -tls-ca go together: give all three or none")
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	caPEM, err := os.ReadFile(o.tlsCA)
	if err != nil {
		return fmt.Errorf("-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("-tls-ca: no PEM certificate in %s", o.tlsCA)
	}
	o.cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool, MinVersion: tls.VersionTLS13}
	return nil
}

func usage(out io.Writer, all []setting) {
	fmt.Fprintf(out, `Usage: gridkv [flags]

Runs one GridKV node: it joins (or forms) a cluster and serves the Redis
protocol on -resp-addr. Each flag can be given as an environment variable
instead, named GRIDKV_ and the flag in upper snake case; a flag wins over
its variable. Any other GRIDKV_ variable is an error.

Flags:
`)
	for _, s := range all {
		name := "-" + s.flag
		if s.arg != "" {
			name += " " + s.arg
		}
		fmt.Fprintf(out, "  %s\n    \t%s (default %s; env %s)\n", name, s.usage, s.def, envName(s.flag))
	}
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func setInt(dst *int, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return errors.New("not an integer")
	}
	*dst = n
	return nil
}

func setDuration(dst *time.Duration, v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("not a duration (like 500ms, 30s, 2m)")
	}
	*dst = d
	return nil
}

// parseBytes reads a byte count: a number, or one followed by KiB, MiB or
// GiB.
func parseBytes(v string) (int64, error) {
	unit := int64(1)
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if s, ok := strings.CutSuffix(v, u.suffix); ok {
			v, unit = s, u.n
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/unit {
		return 0, errors.New("not a byte count (like 1048576 or 1MiB)")
	}
	return n * unit, nil
}

// parseKey reads a gossip key in hex or standard base64; the length is
// checked by gridkv.Open.
func parseKey(v string) ([]byte, error) {
	if b, err := hex.DecodeString(v); err == nil {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(v); err == nil {
		return b, nil
	}
	return nil, errors.New("not hex or base64")
}
