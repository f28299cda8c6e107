package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// The suite's scanners (Workload.Scan): two clients that run Scan over the
// workload's key prefix, over and over, while the clients run, and record
// what each call returned; checkScans holds that to the history.
//
// The workload's keys are deleted every few tens of milliseconds each, so
// few scans are bound to return them. Beside them the scanners keep steady
// keys under the same prefix: written once before the clients begin, then
// only overwritten (puts, never a delete), so that every linearizable scan
// must return each of them, at a value not overwritten before it began.

const (
	scannerCount   = 2
	steadyKeyCount = 16
	scanRate       = 10 // scans per second per scanner (a paged scan counts once)
	steadyRate     = 40 // puts per second over all the steady keys
	scanPageLimit  = 6  // a paged scan's Limit
)

// steadyKeys names the steady keys: the workload's keys' common prefix,
// "s", and a number, skipping any name the workload uses.
func steadyKeys(workload []string) []string {
	prefix := commonPrefix(workload)
	var out []string
	for i := 0; len(out) < steadyKeyCount; i++ {
		if k := fmt.Sprintf("%ss%02d", prefix, i); !slices.Contains(workload, k) {
			out = append(out, k)
		}
	}
	return out
}

// scanFault breaks the suite's own scanners on purpose, for a negative
// control (Controls): what gridkv returned is intact, what the scanner
// records is not, and the scan check must catch it.
type scanFault int

const (
	scanIntact scanFault = iota
	// scanDropOne: the scanFaultAt-th whole linearizable scan holding at
	// least 3 entries (counted over both scanners) is recorded without
	// its middle entry: a steady key, which every such scan must return.
	scanDropOne
	// scanSwapOne: that scan is recorded with its middle entry and the
	// one before it swapped.
	scanSwapOne
)

// scanFaultAt is which scan a scanFault breaks: a few seconds in, even
// where partitions fail most scans (random-halves: about 20 such scans in
// a run, the 15th 6.5 s in).
const scanFaultAt = 8

// scanners runs the suite's scanners and the steady keys' writer over one
// run.
type scanners struct {
	c      *Cluster
	h      *History
	w      Workload
	prefix string
	steady []string
	fault  scanFault
	wg     sync.WaitGroup
	mu     struct {
		sync.Mutex
		scans    []*scanRecord
		eligible int    // scans the fault could break, so far
		fault    string // what it did
	}
}

// startScanners writes each steady key once (bounded by ctx and
// RecoveryBound), then starts the scanners and the steady keys' writer,
// which run until stop closes; wait waits for them.
func startScanners(ctx context.Context, c *Cluster, h *History, w Workload, workload, steady []string, seed uint64, stop <-chan struct{}) (*scanners, error) {
	ss := &scanners{c: c, h: h, w: w, prefix: commonPrefix(workload), steady: steady, fault: w.scanFault}
	writer := &steadyWriter{ss: ss, client: w.Clients + len(c.Nodes) + 1, rng: rand.New(rand.NewPCG(seed, 0x57ead))}
	began := time.Now()
	for _, k := range steady {
		for !writer.put(k) {
			if ctx.Err() != nil || time.Since(began) > RecoveryBound {
				return nil, fmt.Errorf("tests: the steady key %s took no write within %v", k, RecoveryBound)
			}
		}
	}
	ss.wg.Add(1 + scannerCount)
	go func() {
		defer ss.wg.Done()
		paced(stop, steadyRate, func() { writer.put(steady[writer.rng.IntN(len(steady))]) })
	}()
	for i := range scannerCount {
		sc := &scanner{ss: ss, name: fmt.Sprintf("s%d", i), node: i % len(c.Nodes), rng: rand.New(rand.NewPCG(seed, 0x5ca7+uint64(i)))}
		go func() {
			defer ss.wg.Done()
			paced(stop, scanRate, sc.step)
		}()
	}
	return ss, nil
}

// paced calls f rate times a second (at once when behind) until stop
// closes.
func paced(stop <-chan struct{}, rate int, f func()) {
	pace := time.NewTimer(0)
	defer pace.Stop()
	next := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-pace.C:
		}
		f()
		next = next.Add(time.Second / time.Duration(rate))
		pace.Reset(time.Until(next))
	}
}

// wait waits for the scanners and the writer, and returns the scans and
// what the fault (if any) did.
func (ss *scanners) wait() ([]*scanRecord, string) {
	ss.wg.Wait()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.mu.scans, ss.mu.fault
}

// liveNode is node i if it is live, else the next live one.
func (ss *scanners) liveNode(i int) int {
	for k := range ss.c.Nodes {
		if j := (i + k) % len(ss.c.Nodes); !ss.c.Nodes[j].Crashed() {
			return j
		}
	}
	return i
}

// steadyWriter puts unique values into the steady keys, through each live
// node in turn; the puts join the history.
type steadyWriter struct {
	ss     *scanners
	client int
	rng    *rand.Rand
	seq    int
}

// put writes one value to key and reports whether it was acknowledged.
func (sw *steadyWriter) put(key string) bool {
	sw.seq++
	ni := sw.ss.liveNode(sw.seq)
	in := Input{Kind: OpPut, Key: key, Value: fmt.Sprintf("steady-%d", sw.seq), Node: ni}
	out, failed := execute(dbStore{sw.ss.c.Nodes[ni].DB()}, in, sw.ss.w, sw.ss.w.Timeout, sw.ss.h, sw.client)
	return !failed && !out.Unknown
}

// scanner is one of the scanners, bound to a node (the next live one if
// it crashed).
type scanner struct {
	ss   *scanners
	name string
	node int
	rng  *rand.Rand
	seq  int
}

// step runs one scan: in the default mode (half of them), with
// ReadIndex() or Stale(); one in three paged, Limit(scanPageLimit) and
// After the last key of the page before, each page a call of its own.
func (sc *scanner) step() {
	mode := ReadDefault
	switch p := sc.rng.IntN(20); {
	case p >= 17:
		mode = ReadStale
	case p >= 10:
		mode = ReadIndex
	}
	if sc.rng.IntN(3) > 0 {
		sc.scan(mode, 0, "", 0)
		return
	}
	after := ""
	for page := 1; ; page++ {
		rec := sc.scan(mode, scanPageLimit, after, page)
		if rec.Err != "" || len(rec.Entries) < scanPageLimit {
			return
		}
		after = rec.Entries[len(rec.Entries)-1].Key
	}
}

// scan makes one Scan call and records it.
func (sc *scanner) scan(mode ReadMode, limit int, after string, page int) *scanRecord {
	ss := sc.ss
	ni := ss.liveNode(sc.node)
	opts := mode.options(ss.w.Replicas)
	if limit > 0 {
		opts = append(opts, gridkv.Limit(limit))
	}
	if after != "" {
		opts = append(opts, gridkv.After(after))
	}
	sc.seq++
	rec := &scanRecord{Scanner: sc.name, Seq: sc.seq, Node: ss.c.Nodes[ni].Name, Mode: mode, Limit: limit, After: after, Page: page}
	ctx, cancel := context.WithTimeout(context.Background(), max(2*ss.w.Timeout, time.Second))
	defer cancel()
	rec.Call = ss.h.now()
	for e, err := range ss.c.Nodes[ni].DB().Scan(ctx, ss.prefix, opts...) {
		if err != nil {
			rec.Err = err.Error()
			break
		}
		rec.Entries = append(rec.Entries, scanEntry{Key: e.Key, Value: string(e.Value), Version: e.Version})
	}
	rec.Return = ss.h.now()
	ss.record(rec)
	return rec
}

// record keeps rec, through the fault if one is on.
func (ss *scanners) record(rec *scanRecord) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.fault != scanIntact && rec.Err == "" && rec.Mode.linearizable() && rec.Limit == 0 && len(rec.Entries) >= 3 {
		if ss.mu.eligible++; ss.mu.eligible == scanFaultAt {
			i := len(rec.Entries) / 2
			e := rec.Entries
			switch ss.fault {
			case scanDropOne:
				ss.mu.fault = fmt.Sprintf("%s recorded without %s", rec, e[i])
				rec.Entries = slices.Delete(slices.Clone(e), i, i+1)
			case scanSwapOne:
				ss.mu.fault = fmt.Sprintf("%s recorded with %s and %s swapped", rec, e[i-1], e[i])
				e[i-1], e[i] = e[i], e[i-1]
			}
		}
	}
	ss.mu.scans = append(ss.mu.scans, rec)
}
