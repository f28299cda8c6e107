package tests

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The scan checker: what the suite's scanners (scanners.go) got from
// Scan, held to the history the clients recorded. docs/jepsen.md, "The
// scan check", states what it checks; checkScans says how.

// scanEntry is one entry a scan returned.
type scanEntry struct {
	Key, Value string
	Version    uint64
}

// scanRecord is one Scan call of a scanner: a whole scan, or one page of a
// paged one (Limit, After), with its call and return on the history clock.
type scanRecord struct {
	Scanner string
	Seq     int // the scanner's nth call
	Node    string
	Mode    ReadMode // ReadDefault, ReadIndex or ReadStale
	Limit   int      // 0: none
	After   string   // the cursor ("": from the start)
	Page    int      // a paged scan's page, from 1; 0: not paged
	// Call is taken before the iteration starts (nothing is read before),
	// Return once it has ended.
	Call, Return int64
	Entries      []scanEntry
	Err          string // it ended in an error: recorded, not checked
}

func (s *scanRecord) String() string {
	paging := ""
	if s.Limit > 0 {
		paging = fmt.Sprintf(", page %d: limit %d after %q", s.Page, s.Limit, s.After)
	}
	return fmt.Sprintf("%s#%d (%s%s, on %s, [%s, %s])", s.Scanner, s.Seq, s.Mode, paging, s.Node, fmtAt(s.Call), fmtAt(s.Return))
}

// scanInput is what checkScans checks.
type scanInput struct {
	Scans []*scanRecord
	// Ops is the checked history (h.ops): every write, acknowledged or of
	// unknown outcome, and the reads. Refused are the writes that failed
	// for certain (not applied).
	Ops     []porcupine.Operation
	Refused []failedOp
	Prefix  string   // what every scan asked for
	Steady  []string // the steady keys, for the counts
}

// ScanSummary is the scan check's outcome, for the report.
type ScanSummary struct {
	Scanners int
	Scans    int // Scan calls: whole scans, and each page of a paged one
	Pages    int // of those, pages of paged scans (Limit, After)
	Stale    int // of those, in the Stale mode: only rules (a), (c) and (e)'s agreement
	Failed   int // ended in an error: not checked
	Checked  int // completed in a linearizable mode: every rule
	Entries  int // entries the checked scans returned
	Keys     int // distinct keys among them
	// Required counts the (scan, key) pairs that completeness required:
	// keys certainly present over the scan's whole window (RequiredSteady
	// of them steady keys); Judged, the
	// entries of checked scans whose key had a value certainly
	// overwritten before the scan began: where rule (d) could find one.
	Required, RequiredSteady, Judged int
	Errors                           map[string]int // of the failed scans, by kind
	Problems                         []string
	Check                            time.Duration
	// Fault says what a negative control's scanFault did ("" without one).
	Fault string
	// Steady is how many steady keys the scanners kept (see scanners.go).
	Steady int
}

// String is the report's lines.
func (s *ScanSummary) String() string {
	verdict := "ok"
	if len(s.Problems) > 0 {
		verdict = fmt.Sprintf("%d problems", len(s.Problems))
	}
	out := fmt.Sprintf("scan: %d scanners, %d scans (%d pages of paged scans, %d stale), %d failed, %d checked: %d entries of %d keys (%d steady), %d keys required present (%d steady), %d values judged for staleness, check %v: %s",
		s.Scanners, s.Scans, s.Pages, s.Stale, s.Failed, s.Checked, s.Entries, s.Keys, s.Steady, s.Required, s.RequiredSteady, s.Judged,
		s.Check.Round(time.Millisecond), verdict)
	if len(s.Errors) > 0 {
		kinds := make([]string, 0, len(s.Errors))
		for k := range s.Errors {
			kinds = append(kinds, k)
		}
		sort.Slice(kinds, func(i, j int) bool {
			return s.Errors[kinds[i]] > s.Errors[kinds[j]] || s.Errors[kinds[i]] == s.Errors[kinds[j]] && kinds[i] < kinds[j]
		})
		var parts []string
		for i, k := range kinds {
			if i == 3 {
				parts = append(parts, fmt.Sprintf("%d more kinds", len(kinds)-3))
				break
			}
			parts = append(parts, fmt.Sprintf("%d x %s", s.Errors[k], k))
		}
		out += "\n  scan errors: " + strings.Join(parts, "; ")
	}
	if s.Fault != "" {
		out += "\n  scan fault (negative control): " + s.Fault
	}
	return out
}

// span is an operation's call and return.
type span struct{ call, ret int64 }

// scanKey is what the history says about one key, for the scan check.
type scanKey struct {
	// makers are the acknowledged writes that left the key present (a
	// put, a CAS that swapped, an Incr that counted), by return, with
	// makerLatest[i] the index of the latest call among makers[:i+1].
	makers      []porcupine.Operation
	makerLatest []int
	// removers are the operations that may have deleted the key (a Delete
	// not refused, a CompareAndDelete that deleted or of unknown outcome),
	// by call, with removerRet[i] the latest return among removers[:i+1].
	removers   []span
	removerRet []int64
	// overwriters are the acknowledged writes that certainly changed the
	// key (a put, a CAS that swapped, an Incr of a nonzero delta that
	// counted, a Delete, a CompareAndDelete that deleted), by call, with
	// overwriterRet[i] the earliest return among overwriters[i:], and
	// overwriterOp the operations.
	overwriters   []span
	overwriterRet []int64
	overwriterOp  []porcupine.Operation
	// producers are, per value, the writes that may have stored it: a
	// put, a CAS that swapped or of unknown outcome, an Incr that counted
	// (its sum).
	producers map[string][]porcupine.Operation
	// anyCounter is the first call of an Incr of unknown outcome: it may
	// have stored any counter after it (infinity: none).
	anyCounter int64
	// superseded is the first time some value of the key was certainly
	// overwritten: the earliest return of an overwriter invoked after a
	// maker returned (infinity: never).
	superseded int64
	// firstMaker is the first call of a write that may have made the key
	// present (infinity: none).
	firstMaker int64
	refused    []failedOp // puts and CAS refused for certain
}

func indexScanKeys(ops []porcupine.Operation, refused []failedOp) map[string]*scanKey {
	byKey := map[string]*scanKey{}
	get := func(k string) *scanKey {
		sk := byKey[k]
		if sk == nil {
			sk = &scanKey{producers: map[string][]porcupine.Operation{}, anyCounter: infinity, firstMaker: infinity, superseded: infinity}
			byKey[k] = sk
		}
		return sk
	}
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		if in.Kind == OpGet {
			continue
		}
		sk, s := get(in.Key), span{op.Call, op.Return}
		acked := !out.Unknown
		switch in.Kind {
		case OpPut, OpCAS:
			if in.Kind == OpPut || out.Swapped || out.Unknown {
				sk.producers[in.Value] = append(sk.producers[in.Value], op)
				sk.firstMaker = min(sk.firstMaker, op.Call)
				if acked {
					sk.makers = append(sk.makers, op)
					sk.overwriters = append(sk.overwriters, s)
					sk.overwriterOp = append(sk.overwriterOp, op)
				}
			}
		case OpIncr:
			switch {
			case out.Unknown:
				sk.anyCounter = min(sk.anyCounter, op.Call)
				sk.firstMaker = min(sk.firstMaker, op.Call)
			case !out.Invalid:
				sum := strconv.FormatInt(out.Sum, 10)
				sk.producers[sum] = append(sk.producers[sum], op)
				sk.firstMaker = min(sk.firstMaker, op.Call)
				sk.makers = append(sk.makers, op)
				if in.Delta != 0 {
					sk.overwriters = append(sk.overwriters, s)
					sk.overwriterOp = append(sk.overwriterOp, op)
				}
			}
		case OpDelete, OpCAD:
			if in.Kind == OpDelete || out.Swapped || out.Unknown {
				sk.removers = append(sk.removers, s)
				if acked {
					sk.overwriters = append(sk.overwriters, s)
					sk.overwriterOp = append(sk.overwriterOp, op)
				}
			}
		}
	}
	for _, f := range refused {
		if f.in.Kind == OpPut || f.in.Kind == OpCAS {
			sk := get(f.in.Key)
			sk.refused = append(sk.refused, f)
		}
	}
	for _, sk := range byKey {
		sort.Slice(sk.makers, func(i, j int) bool { return sk.makers[i].Return < sk.makers[j].Return })
		sk.makerLatest = make([]int, len(sk.makers))
		for i, m := range sk.makers {
			sk.makerLatest[i] = i
			if i > 0 && sk.makers[sk.makerLatest[i-1]].Call > m.Call {
				sk.makerLatest[i] = sk.makerLatest[i-1]
			}
		}
		sort.Slice(sk.removers, func(i, j int) bool { return sk.removers[i].call < sk.removers[j].call })
		sk.removerRet = make([]int64, len(sk.removers))
		for i, r := range sk.removers {
			sk.removerRet[i] = r.ret
			if i > 0 {
				sk.removerRet[i] = max(r.ret, sk.removerRet[i-1])
			}
		}
		idx := make([]int, len(sk.overwriters))
		for i := range idx {
			idx[i] = i
		}
		sort.Slice(idx, func(i, j int) bool { return sk.overwriters[idx[i]].call < sk.overwriters[idx[j]].call })
		ow, oo := make([]span, len(idx)), make([]porcupine.Operation, len(idx))
		for i, j := range idx {
			ow[i], oo[i] = sk.overwriters[j], sk.overwriterOp[j]
		}
		sk.overwriters, sk.overwriterOp = ow, oo
		sk.overwriterRet = make([]int64, len(ow))
		for i := len(ow) - 1; i >= 0; i-- {
			sk.overwriterRet[i] = ow[i].ret
			if i < len(ow)-1 {
				sk.overwriterRet[i] = min(ow[i].ret, sk.overwriterRet[i+1])
			}
		}
		if len(sk.makers) > 0 {
			i := sort.Search(len(ow), func(i int) bool { return ow[i].call > sk.makers[0].Return })
			if i < len(ow) {
				sk.superseded = sk.overwriterRet[i]
			}
		}
	}
	return byKey
}

// certain reports whether the key was present over all of [from, to]: a
// maker acknowledged before from, and no remover invoked before to that
// may have applied after that maker (one that returned before the maker
// was invoked applied before it). Of the makers acknowledged before from,
// the one invoked last excludes the most removers; certain returns it.
func (sk *scanKey) certain(from, to int64) (porcupine.Operation, bool) {
	i := sort.Search(len(sk.makers), func(i int) bool { return sk.makers[i].Return >= from })
	if i == 0 {
		return porcupine.Operation{}, false
	}
	since := sk.makers[sk.makerLatest[i-1]]
	j := sort.Search(len(sk.removers), func(i int) bool { return sk.removers[i].call >= to })
	return since, j == 0 || sk.removerRet[j-1] < since.Call
}

// overwrittenBy returns an acknowledged write that certainly changed the
// key after p (invoked after p was acknowledged) and was acknowledged
// before t, if there is one. p of unknown outcome may apply at any point
// after its call: never overwritten.
func (sk *scanKey) overwrittenBy(p porcupine.Operation, t int64) (porcupine.Operation, bool) {
	if p.Output.(Output).Unknown {
		return porcupine.Operation{}, false
	}
	i := sort.Search(len(sk.overwriters), func(i int) bool { return sk.overwriters[i].call > p.Return })
	if i == len(sk.overwriters) || sk.overwriterRet[i] >= t {
		return porcupine.Operation{}, false
	}
	for j := i; ; j++ { // the first such, to name it
		if sk.overwriters[j].ret < t {
			return sk.overwriterOp[j], true
		}
	}
}

// entriesAround shows a scan's entries around where key is or would be.
func entriesAround(s *scanRecord, key string) string {
	i := sort.Search(len(s.Entries), func(i int) bool { return s.Entries[i].Key >= key })
	lo, hi := max(0, i-2), min(len(s.Entries), i+2)
	if lo >= hi {
		return "no entries"
	}
	var parts []string
	for _, e := range s.Entries[lo:hi] {
		parts = append(parts, e.String())
	}
	more := ""
	if n := len(s.Entries) - (hi - lo); n > 0 {
		more = fmt.Sprintf(" (of %d)", len(s.Entries))
	}
	return strings.Join(parts, ", ") + more
}

func (e scanEntry) String() string {
	return fmt.Sprintf("%s v%s %q", e.Key, fmtVersion(e.Version), e.Value)
}

// checkScans holds each scan the scanners recorded to Scan's promise and
// to the history. Scans that ended in an error are counted, not checked.
//
//	(a) form: keys in strictly increasing order (no duplicate), each with
//	    the prefix, after the cursor (After), at most Limit of them, no
//	    version 0;
//	(b) completeness (linearizable modes): every key certainly present
//	    over the whole scan, [call, return], is returned: a write that
//	    left it present (a put, a CAS that swapped, an Incr that counted)
//	    was acknowledged before the call, and no Delete or
//	    CompareAndDelete that may have applied after that write was
//	    invoked before the return; with a Limit reached, only the keys up
//	    to the last one returned;
//	(c) no phantom: every key returned was written by a write invoked
//	    before the return that may have left it present (not refused),
//	    and its value is one such a write stored (a put's or CAS's value,
//	    an Incr's sum, or, after an Incr of unknown outcome, any counter);
//	(d) no stale value (linearizable modes): not every write that may
//	    have stored the value returned was certainly overwritten before
//	    the call (acknowledged, and followed by an acknowledged write of
//	    the key, invoked after it was acknowledged and acknowledged before
//	    the call, that certainly changed the key);
//	(e) versions: one value per (key, version) across every scan, and,
//	    between linearizable scans, a key's version never goes back: a
//	    scan invoked after another returned holds the key at a version at
//	    least as high.
func checkScans(in scanInput) ScanSummary {
	start := time.Now()
	p := problemList{subject: "scan"}
	sum := ScanSummary{Scans: len(in.Scans), Steady: len(in.Steady), Errors: map[string]int{}}
	keys := indexScanKeys(in.Ops, in.Refused)
	// The keys completeness may require, in order.
	var known []string
	for k := range keys {
		if strings.HasPrefix(k, in.Prefix) {
			known = append(known, k)
		}
	}
	sort.Strings(known)
	steady := map[string]bool{}
	for _, k := range in.Steady {
		steady[k] = true
	}
	scanners := map[string]bool{}
	seenKeys := map[string]bool{}
	type versioned struct {
		value string
		scan  *scanRecord
	}
	versions := map[string]map[uint64]versioned{} // key -> version -> first scan's value

	var linear []*scanRecord
	for _, s := range in.Scans {
		scanners[s.Scanner] = true
		if s.Limit > 0 {
			sum.Pages++
		}
		if !s.Mode.linearizable() {
			sum.Stale++
		}
		if s.Err != "" {
			sum.Failed++
			sum.Errors[errorClass(s.Err)]++
			continue
		}
		if s.Mode.linearizable() {
			sum.Checked++
			sum.Entries += len(s.Entries)
			linear = append(linear, s)
		}
		// (a)
		if s.Limit > 0 && len(s.Entries) > s.Limit {
			p.add("limit", "%s returned %d entries", s, len(s.Entries))
		}
		for i, e := range s.Entries {
			if s.Mode.linearizable() {
				seenKeys[e.Key] = true
			}
			switch {
			case !strings.HasPrefix(e.Key, in.Prefix):
				p.add("prefix", "%s returned %s, without the prefix %q", s, e, in.Prefix)
			case s.After != "" && e.Key <= s.After:
				p.add("cursor", "%s returned %s, not after its cursor %q", s, e, s.After)
			case i > 0 && e.Key == s.Entries[i-1].Key:
				p.add("duplicate", "%s returned %s twice: %s", s, e.Key, entriesAround(s, e.Key))
			case i > 0 && e.Key < s.Entries[i-1].Key:
				p.add("order", "%s returned %s after %s", s, e, s.Entries[i-1])
			case e.Version == 0:
				p.add("version", "%s returned %s with version 0", s, e)
			}
			// (c), (d)
			checkScanValue(&p, &sum, s, e, keys[e.Key])
			// (e): one value per version.
			if versions[e.Key] == nil {
				versions[e.Key] = map[uint64]versioned{}
			}
			if v, ok := versions[e.Key][e.Version]; !ok {
				versions[e.Key][e.Version] = versioned{e.Value, s}
			} else if v.value != e.Value {
				p.add("disagree", "%s at v%s: %s returned %q, %s returned %q", e.Key, fmtVersion(e.Version), v.scan, v.value, s, e.Value)
			}
		}
		if !s.Mode.linearizable() {
			continue
		}
		// (b)
		returned := make(map[string]bool, len(s.Entries))
		for _, e := range s.Entries {
			returned[e.Key] = true
		}
		upTo := "" // with the Limit reached, the last key returned bounds what is required
		if s.Limit > 0 && len(s.Entries) >= s.Limit {
			upTo = s.Entries[len(s.Entries)-1].Key
		}
		for _, k := range known {
			if k <= s.After || upTo != "" && k > upTo {
				continue
			}
			since, ok := keys[k].certain(s.Call, s.Return)
			if !ok {
				continue
			}
			sum.Required++
			if steady[k] {
				sum.RequiredSteady++
			}
			if returned[k] {
				continue
			}
			p.add("missing", "%s lacks %s: present since %s, and no Delete or CompareAndDelete that may have followed it was invoked before the scan returned; around it the scan returned: %s",
				s, k, describeOp(since), entriesAround(s, k))
		}
	}
	sum.Scanners, sum.Keys = len(scanners), len(seenKeys)
	checkScanVersionOrder(&p, linear)
	sum.Problems = p.list()
	sum.Check = time.Since(start)
	return sum
}

// checkScanValue is (c) for entry e of scan s, and (d) where s is
// linearizable; sk is what the history says of e's key (nil: nothing).
func checkScanValue(p *problemList, sum *ScanSummary, s *scanRecord, e scanEntry, sk *scanKey) {
	if sk == nil || sk.firstMaker >= s.Return {
		why := "no write"
		switch {
		case sk != nil && sk.firstMaker < infinity:
			why = "no write invoked before the scan returned (the first at " + fmtAt(sk.firstMaker) + ")"
		case sk != nil && len(sk.refused) > 0:
			why = fmt.Sprintf("only writes refused for certain (%s)", describeFailed(sk.refused[0]))
		}
		p.add("phantom", "%s returned %s, a key with %s", s, e, why)
		return
	}
	var before []porcupine.Operation // the writes that may have stored the value
	for _, op := range sk.producers[e.Value] {
		if op.Call < s.Return {
			before = append(before, op)
		}
	}
	_, isCounter := counter(e.Value)
	anyCounter := isCounter && e.Value != "" && sk.anyCounter < s.Return
	if len(before) == 0 && !anyCounter {
		why := "no write stored that value"
		for _, f := range sk.refused {
			if f.in.Value == e.Value {
				why = "only a write refused for certain stored that value: " + describeFailed(f)
			}
		}
		if ops := sk.producers[e.Value]; len(ops) > 0 {
			why = "the write of that value was invoked after the scan returned: " + describeOp(ops[0])
		}
		p.add("invented", "%s returned %s, but %s", s, e, why)
		return
	}
	if !s.Mode.linearizable() {
		return
	}
	if sk.superseded < s.Call {
		sum.Judged++
	}
	if anyCounter {
		return
	}
	// (d): stale if every write that may have stored it was overwritten
	// for certain before the scan was invoked.
	var last, by porcupine.Operation
	for _, op := range before {
		o, ok := sk.overwrittenBy(op, s.Call)
		if !ok {
			return
		}
		if op.Return > last.Return {
			last, by = op, o
		}
	}
	if len(before) > 0 {
		p.add("stale", "%s returned %s, but %s was overwritten before the scan began, by %s", s, e, describeOp(last), describeOp(by))
	}
}

// checkScanVersionOrder is (e)'s real-time rule: a linearizable scan
// invoked after another returned holds each key they both hold at a
// version at least as high.
func checkScanVersionOrder(p *problemList, scans []*scanRecord) {
	type read struct {
		s       *scanRecord
		version uint64
	}
	byKey := map[string][]read{}
	for _, s := range scans {
		for _, e := range s.Entries {
			byKey[e.Key] = append(byKey[e.Key], read{s, e.Version})
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		realTimeInversions(byKey[k],
			func(r read) int64 { return r.s.Call }, func(r read) int64 { return r.s.Return },
			func(r read) uint64 { return r.version },
			func(b, r read) {
				p.add("version order", "%s returned %s at v%s, but %s, which returned before it was invoked, had v%s",
					r.s, k, fmtVersion(r.version), b.s, fmtVersion(b.version))
			})
	}
}

func describeFailed(f failedOp) string {
	return fmt.Sprintf("%s [%s] (refused)", kvModel.DescribeOperation(f.in, Output{}), fmtAt(f.call))
}
