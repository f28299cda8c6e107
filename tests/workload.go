package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/placement"
)

// OpKind is what a client does.
type OpKind int

const (
	OpGet OpKind = iota
	OpPut
	OpDelete
	OpCAS
	OpIncr // Incr: adds Delta to a decimal counter
	OpCAD  // CompareAndDelete: deletes the key if its value is Old
)

// ReadMode is how a get reads.
type ReadMode int

const (
	ReadDefault  ReadMode = iota // linearizable, through the leader
	ReadIndex                    // linearizable, ReadIndex round
	ReadMajority                 // Quorum(ReplicaCount/2+1): linearizable
	ReadOne                      // Quorum(1): may be stale
	ReadStale                    // Stale(): may be stale
	readModes
)

func (m ReadMode) String() string {
	return [...]string{"default", "readindex", "quorum-majority", "quorum-1", "stale"}[m]
}

// linearizable reports whether reads in this mode are checked against the
// linearizable model; the others are only checked to return written values.
func (m ReadMode) linearizable() bool { return m <= ReadMajority }

// quorum is how many of replicas a Quorum read in this mode asks; 0 for
// the modes that are not Quorum reads.
func (m ReadMode) quorum(replicas int) int {
	switch m {
	case ReadMajority:
		return replicas/2 + 1
	case ReadOne:
		return 1
	}
	return 0
}

func (m ReadMode) options(replicas int) []gridkv.ReadOption {
	switch m {
	case ReadIndex:
		return []gridkv.ReadOption{gridkv.ReadIndex()}
	case ReadMajority, ReadOne:
		return []gridkv.ReadOption{gridkv.Quorum(m.quorum(replicas))}
	case ReadStale:
		return []gridkv.ReadOption{gridkv.Stale()}
	}
	return nil
}

// Input is one operation as invoked. Values put or swapped in are unique
// per write; "" is "absent" (no write stores an empty value). Incr's sums
// are not unique: they are the decimal counters it keeps.
type Input struct {
	Kind  OpKind
	Key   string
	Value string // put, CAS new
	Old   string // CAS expected, "" = absent; CompareAndDelete expected
	Delta int64  // Incr
	Mode  ReadMode
	Node  int // which node served the call
}

// Output is its outcome.
type Output struct {
	Value   string // get: the value read, "" when absent
	Swapped bool   // CAS swapped; CompareAndDelete deleted
	Sum     int64  // Incr: the sum it stored
	// Invalid: an Incr refused with ErrInvalid, the value not a decimal
	// int64 (or the sum overflowing): a definite outcome, nothing changed.
	Invalid bool
	Unknown bool // a write whose effect is unknown (timeout, connection lost)
	Err     string
}

// History is what the clients saw, on one monotonic clock (nanoseconds
// since the run began).
type History struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation // linearizable part, plus final reads
	weak  []porcupine.Operation // reads in modes that may be stale
	// Counts for the report.
	total, ok, failed, unknown int
	failedOps                  []failedOp // for availability
	errors                     map[string]int
	outcomes                   map[string]int // of Incr and CompareAndDelete, see outcome
}

func newHistory() *History { return &History{start: time.Now()} }

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// infinity is the return time of writes with unknown outcome: they may
// take effect at any point after their call, or never.
const infinity = int64(1) << 62

func (h *History) record(client int, in Input, call int64, out Output, failed bool) {
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total++
	if out.Err != "" {
		if h.errors == nil {
			h.errors = map[string]int{}
		}
		h.errors[errorClass(out.Err)]++
	}
	switch {
	case out.Unknown:
		h.unknown++
		ret = infinity
	case failed:
		h.failed++
		h.failedOps = append(h.failedOps, failedOp{call: call, in: in})
		return // a failed read, or a write certainly not applied: no effect
	default:
		h.ok++
	}
	if o := outcome(in, out); o != "" {
		if h.outcomes == nil {
			h.outcomes = map[string]int{}
		}
		h.outcomes[o]++
	}
	op := porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
	if in.Kind == OpGet && !in.Mode.linearizable() {
		h.weak = append(h.weak, op)
		return
	}
	h.ops = append(h.ops, op)
}

// outcome names what an Incr or CompareAndDelete did, for the report: how
// often counters met the other writes.
func outcome(in Input, out Output) string {
	var verdict string
	switch {
	case in.Kind != OpIncr && in.Kind != OpCAD:
		return ""
	case out.Unknown:
		verdict = "unknown"
	case in.Kind == OpIncr && out.Invalid:
		verdict = "refused"
	case in.Kind == OpIncr:
		verdict = "counted"
	case out.Swapped:
		verdict = "deleted"
	default:
		verdict = "kept"
	}
	if in.Kind == OpIncr {
		return "incr " + verdict
	}
	return "compare-and-delete " + verdict
}

// failedOp is an operation that certainly had no effect: a failed read,
// a refused write.
type failedOp struct {
	call int64
	in   Input
}

// errorClass strips the addresses and numbers from an error message, so
// that the report can count errors by kind.
func errorClass(msg string) string {
	b := []byte(msg)
	out := b[:0]
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= '0' && c <= '9' {
			if len(out) == 0 || out[len(out)-1] != '#' {
				out = append(out, '#')
			}
			continue
		}
		if c == '.' && len(out) > 0 && out[len(out)-1] == '#' {
			continue // 127.0.0.1:4 and 1.5s collapse to #
		}
		if c == '\n' {
			c = ' ' // joined errors: keep the report one line each
		}
		out = append(out, c)
	}
	return string(out)
}

// Workload is the clients' part of a scenario.
type Workload struct {
	Clients int
	Keys    int
	// KeyNames, if set, names the Keys keys once the cluster is up (see
	// KeysPlannedFor); nil: k0, k1, ...
	KeyNames func(c *Cluster, keys int) []string
	Replicas int // ReplicaCount, for the majority read mode
	Timeout  time.Duration
	// Rate caps each client's operations per second, so that histories
	// stay small enough to check (DESIGN.md: <= 20k operations per key).
	Rate int
	// Reads is the percentage of gets; 0 means 45. The rest are puts,
	// deletes and CAS in the proportions 30:8:17.
	Reads int
	// ReadsByNode, if set, is the percentage of gets, 0 to 100, of the
	// clients of node i (nodes past its end take Reads).
	ReadsByNode []int
	// TrustErrors classifies failed writes by gridkv's error contract
	// (gridkv/errors.go): only an error that says "outcome unknown" leaves
	// a write's outcome unknown; any other error means it was not applied.
	// Without it every failed write counts as unknown, which is weaker, and
	// slow to check when the history is Illegal: each unknown write stays
	// open to the end. With it the check covers the contract too.
	TrustErrors bool
	// Modes are the read modes gets draw from, uniformly (repeat one to
	// weight it); nil: every mode.
	Modes []ReadMode
	// DataModel adds Incr and CompareAndDelete to the writes, on the same
	// keys: puts, deletes, CAS, Incr and CompareAndDelete in the
	// proportions 22:5:12:11:5. Half of the puts and CAS write a decimal
	// value (unique too, see decimalValue), so that counters and the other
	// writes meet: an Incr finds a counter or an absent key, or else a
	// value that is not a decimal int64 (ErrInvalid; about 4 Incrs in 10).
	DataModel bool
	// Watch runs a watcher on every node over the keys, from before the
	// clients begin until after the final reads, and checks what each saw
	// against the history and the others (checkWatches; docs/jepsen.md,
	// "The watch check").
	Watch bool
	// Scan runs two scanners over the keys' common prefix while the
	// clients run, and checks each scan against the history (checkScans;
	// docs/jepsen.md, "The scan check"). It adds steady keys under that
	// prefix, written before the clients begin and only overwritten after.
	Scan bool
	// incrGetSet and cadGetDelete are negative controls (Controls): the
	// clients do Incr as a Get then a Set of the sum, CompareAndDelete as a
	// Get then a Delete, each two calls instead of one atomic command.
	incrGetSet, cadGetDelete bool
	// watchFault is a negative control too: the watchers record one event
	// wrong; and scanFault: the scanners record one scan wrong.
	watchFault watchFault
	scanFault  scanFault
}

// keys are the workload's keys on c.
func (w Workload) keys(c *Cluster) []string {
	if w.KeyNames != nil {
		return w.KeyNames(c, w.Keys)
	}
	keys := make([]string, w.Keys)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	return keys
}

// KeysPlannedFor names keys in ranges that placement gives node i to
// lead, so that its leader lease covers them all: the reconciler hands
// those ranges back to it after every election.
func KeysPlannedFor(i int) func(c *Cluster, keys int) []string {
	return func(c *Cluster, keys int) []string {
		var ids []string
		for _, n := range c.Nodes {
			ids = append(ids, n.Name)
		}
		replicas := c.base.ReplicaCount
		if replicas == 0 {
			replicas = 3
		}
		plan := placement.Plan(c.groups(), ids, replicas)
		var out []string
		for k := 0; len(out) < keys && k < 1<<20; k++ { // bounded: node i may lead no range
			key := fmt.Sprint("k", k)
			if plan[placement.GroupOf(placement.RangeOf(key, c.ranges()), c.groups())].Leader == ids[i] {
				out = append(out, key)
			}
		}
		if len(out) == 0 {
			return Workload{Keys: keys}.keys(c)
		}
		return out
	}
}

// kvStore is where a client's operations go: a node of an in-process
// Cluster (dbStore), or a node process of a ProcCluster (procStore). Its
// errors follow gridkv's contract (gridkv/errors.go): ErrNotFound,
// ErrInvalid, and "outcome unknown" in the text of a write that may have
// applied. Safe for concurrent use.
type kvStore interface {
	Get(ctx context.Context, key string, mode ReadMode, replicas int) ([]byte, error)
	Set(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	CompareAndSwap(ctx context.Context, key string, old, new []byte) (bool, error)
	CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error)
	Incr(ctx context.Context, key string, delta int64) (int64, error)
}

// dbStore is a kvStore on a gridkv.DB.
type dbStore struct{ *gridkv.DB }

var _ kvStore = dbStore{}

func (s dbStore) Get(ctx context.Context, key string, mode ReadMode, replicas int) ([]byte, error) {
	return s.DB.Get(ctx, key, mode.options(replicas)...)
}

func (s dbStore) Set(ctx context.Context, key string, value []byte) error {
	return s.DB.Set(ctx, key, value)
}

func (s dbStore) CompareAndSwap(ctx context.Context, key string, old, new []byte) (bool, error) {
	return s.DB.CompareAndSwap(ctx, key, old, new)
}

// nodeSet is the nodes the clients and the final phase talk to: a
// Cluster's or a ProcCluster's. Safe for concurrent use.
type nodeSet interface {
	size() int
	// store is node i's kvStore, and whether the node is up (not crashed
	// nor killed by the nemesis).
	store(i int) (kvStore, bool)
	name(i int) string // for reports
}

func (c *Cluster) size() int { return len(c.Nodes) }

func (c *Cluster) name(i int) string { return c.Nodes[i].Name }

func (c *Cluster) store(i int) (kvStore, bool) {
	n := c.Nodes[i]
	return dbStore{n.DB()}, !n.Crashed()
}

// runClients runs w's clients on keys until stop closes. Client i talks
// to node i mod N, moving on to the next live node if that one is down.
func runClients(ns nodeSet, keys []string, w Workload, seed uint64, h *History, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for i := 0; i < w.Clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &client{id: i, ns: ns, w: w, keys: keys, h: h, rng: rand.New(rand.NewPCG(seed, uint64(i))), node: i % ns.size(),
				recent: map[string]string{}}
			pace := time.NewTimer(0)
			defer pace.Stop()
			next := time.Now()
			for {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				cl.step()
				if w.Rate > 0 {
					next = next.Add(time.Second / time.Duration(w.Rate))
				}
				pace.Reset(time.Until(next)) // at once when behind
			}
		}()
	}
	wg.Wait()
}

type client struct {
	id     int
	ns     nodeSet
	w      Workload
	keys   []string
	h      *History
	rng    *rand.Rand
	node   int
	seq    int
	recent map[string]string // last value this client saw per key (CAS's old)
}

func (cl *client) pickNode() (int, kvStore) {
	for k := 0; k < cl.ns.size(); k++ {
		i := (cl.node + k) % cl.ns.size()
		if s, up := cl.ns.store(i); up {
			return i, s
		}
	}
	s, _ := cl.ns.store(cl.node)
	return cl.node, s
}

func (cl *client) step() {
	ni, n := cl.pickNode()
	key := cl.keys[cl.rng.IntN(len(cl.keys))]
	cl.seq++
	value := fmt.Sprintf("c%d-%d", cl.id, cl.seq)
	in := Input{Key: key, Node: ni}
	reads := cl.w.Reads
	if reads <= 0 {
		reads = 45
	}
	if cl.node < len(cl.w.ReadsByNode) {
		reads = cl.w.ReadsByNode[cl.node]
	}
	if p := cl.rng.IntN(100); p < reads {
		in.Kind = OpGet
		if m := cl.w.Modes; len(m) > 0 {
			in.Mode = m[cl.rng.IntN(len(m))]
		} else {
			in.Mode = ReadMode(cl.rng.IntN(int(readModes)))
		}
	} else if cl.w.DataModel {
		if cl.rng.IntN(2) == 0 {
			value = decimalValue(cl.id, cl.seq)
		}
		switch w := (p - reads) * 55 / (100 - reads); { // as if out of 55
		case w < 22:
			in.Kind, in.Value = OpPut, value
		case w < 27:
			in.Kind = OpDelete
		case w < 39:
			in.Kind, in.Value, in.Old = OpCAS, value, cl.recent[key]
		case w < 50:
			in.Kind, in.Delta = OpIncr, incrDeltas[cl.rng.IntN(len(incrDeltas))]
		default:
			in.Kind, in.Old = OpCAD, cl.recent[key] // "" (absent) never matches
		}
	} else {
		switch w := (p - reads) * 55 / (100 - reads); { // as if out of 55
		case w < 30:
			in.Kind, in.Value = OpPut, value
		case w < 38:
			in.Kind = OpDelete
		default:
			in.Kind, in.Value, in.Old = OpCAS, value, cl.recent[key]
		}
	}
	out, failed := execute(n, in, cl.w, cl.w.Timeout, cl.h, cl.id)
	if !failed && !out.Unknown {
		switch in.Kind {
		case OpGet:
			cl.recent[key] = out.Value
		case OpPut:
			cl.recent[key] = in.Value
		case OpCAS:
			if out.Swapped {
				cl.recent[key] = in.Value
			}
		case OpIncr:
			if !out.Invalid {
				cl.recent[key] = strconv.FormatInt(out.Sum, 10)
			}
		case OpCAD:
			if out.Swapped {
				cl.recent[key] = ""
			}
		}
	}
}

// incrDeltas are what Incrs add: both signs, several sizes, so that a sum
// tells which Incrs came before it more often than +1 alone would.
var incrDeltas = []int64{1, 2, 5, -1, -3}

// decimalValue is a unique value that Incr can count on: client id's
// write seq as (id+1)·10¹⁰ + seq·10⁴ ("30000120000": client 2, write 12).
// Incrs move a counter by a few units, far from the next write's value.
func decimalValue(id, seq int) string {
	return strconv.FormatInt(int64(id+1)*1e10+int64(seq)*1e4, 10)
}

// execute performs in on db and records it.
func execute(db kvStore, in Input, w Workload, timeout time.Duration, h *History, client int) (Output, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	call := h.now()
	var out Output
	var err error
	switch in.Kind {
	case OpGet:
		var v []byte
		v, err = db.Get(ctx, in.Key, in.Mode, w.Replicas)
		if errors.Is(err, gridkv.ErrNotFound) {
			err = nil
		}
		out.Value = string(v)
	case OpPut:
		err = db.Set(ctx, in.Key, []byte(in.Value))
	case OpDelete:
		err = db.Delete(ctx, in.Key)
	case OpCAS:
		var old []byte
		if in.Old != "" {
			old = []byte(in.Old)
		}
		out.Swapped, err = db.CompareAndSwap(ctx, in.Key, old, []byte(in.Value))
	case OpIncr:
		if w.incrGetSet {
			out.Sum, err = incrByGetSet(ctx, db, in.Key, in.Delta)
		} else {
			out.Sum, err = db.Incr(ctx, in.Key, in.Delta)
		}
		if errors.Is(err, gridkv.ErrInvalid) {
			// The answer to an Incr on a value that is not a counter: it
			// applied and changed nothing, which the model checks.
			out.Invalid, out.Err, err = true, err.Error(), nil
		}
	case OpCAD:
		if w.cadGetDelete {
			out.Swapped, err = cadByGetDelete(ctx, db, in.Key, in.Old)
		} else {
			out.Swapped, err = db.CompareAndDelete(ctx, in.Key, []byte(in.Old))
		}
	}
	failed := false
	if err != nil {
		out.Err = err.Error()
		if in.Kind == OpGet || errors.Is(err, gridkv.ErrInvalid) || w.TrustErrors && !strings.Contains(err.Error(), "outcome unknown") {
			failed = true // no effect
		} else {
			out.Unknown = true // it may or may not have been applied
		}
	}
	h.record(client, in, call, out, failed)
	return out, failed
}

// incrByGetSet is Incr done wrong, for a negative control: a read of the
// counter, then a Set of the sum. Two of them at once both read the same
// value, both store the same sum, and one increment is lost.
func incrByGetSet(ctx context.Context, db kvStore, key string, delta int64) (int64, error) {
	v, err := db.Get(ctx, key, ReadDefault, 0)
	if err != nil && !errors.Is(err, gridkv.ErrNotFound) {
		return 0, err
	}
	var n int64
	if len(v) > 0 {
		if n, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("%w: %q is not a decimal int64", gridkv.ErrInvalid, v)
		}
	}
	return n + delta, db.Set(ctx, key, []byte(strconv.FormatInt(n+delta, 10)))
}

// cadByGetDelete is CompareAndDelete done wrong, for a negative control: a
// read, and a Delete if the value read was old. A write between the two is
// deleted with it.
func cadByGetDelete(ctx context.Context, db kvStore, key, old string) (bool, error) {
	v, err := db.Get(ctx, key, ReadDefault, 0)
	if errors.Is(err, gridkv.ErrNotFound) || err == nil && string(v) != old {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, db.Delete(ctx, key)
}
