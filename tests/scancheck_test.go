package tests

import (
	"slices"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"
)

// scanFixture is a small run: keys a, b, c, d under prefix "k", their
// writes, and one scan, s0#1, default mode, [110, 130].
//
//	ka: put "a1" [10, 20]                         present throughout
//	kb: put "b1" [30, 40], put "b2" [70, 80]      b1 overwritten before the scan
//	kc: put "c1" [50, 60], delete [90, 100]       deleted before the scan
//	kd: put "d1" [95, 140]                        concurrent: may or may not show
type scanFixture struct {
	ops     []porcupine.Operation
	refused []failedOp
	scans   []*scanRecord
}

func sput(key, v string, call, ret int64) porcupine.Operation {
	return op(0, Input{Kind: OpPut, Key: key, Value: v}, call, Output{}, ret)
}

func sdel(key string, call, ret int64) porcupine.Operation {
	return op(1, Input{Kind: OpDelete, Key: key}, call, Output{}, ret)
}

func unknown(o porcupine.Operation) porcupine.Operation {
	o.Output, o.Return = Output{Unknown: true, Err: "timed out"}, infinity
	return o
}

func ent(key, value string, seq uint64) scanEntry {
	return scanEntry{Key: key, Value: value, Version: ver(seq)}
}

func newScanFixture() *scanFixture {
	return &scanFixture{
		ops: []porcupine.Operation{
			sput("ka", "a1", 10, 20),
			sput("kb", "b1", 30, 40),
			sput("kc", "c1", 50, 60),
			sput("kb", "b2", 70, 80),
			sdel("kc", 90, 100),
			sput("kd", "d1", 95, 140),
		},
		scans: []*scanRecord{{Scanner: "s0", Seq: 1, Node: "n0", Mode: ReadDefault, Call: 110, Return: 130,
			Entries: []scanEntry{ent("ka", "a1", 1), ent("kb", "b2", 4)}}},
	}
}

func (f *scanFixture) check() ScanSummary {
	return checkScans(scanInput{Scans: f.scans, Ops: f.ops, Refused: f.refused, Prefix: "k", Steady: []string{"ka"}})
}

// Hand-made scans, each broken in one way (or borderline and sound), and
// the problems the check must report.
func TestScanCheckVerdicts(t *testing.T) {
	s0 := func(f *scanFixture) *scanRecord { return f.scans[0] }
	cases := []struct {
		name  string
		edit  func(f *scanFixture)
		kinds []string // problem kinds that must be among those reported; nil: none may be
	}{
		{"clean", func(*scanFixture) {}, nil},
		{"a write concurrent with the scan shows", func(f *scanFixture) {
			s0(f).Entries = append(s0(f).Entries, ent("kd", "d1", 6))
		}, nil},
		{"a key certainly present is missing", func(f *scanFixture) {
			s0(f).Entries = s0(f).Entries[1:]
		}, []string{"missing"}},
		{"a key returned twice", func(f *scanFixture) {
			s0(f).Entries = append(s0(f).Entries, ent("kb", "b2", 4))
		}, []string{"duplicate"}},
		{"keys out of order", func(f *scanFixture) {
			e := s0(f).Entries
			e[0], e[1] = e[1], e[0]
		}, []string{"order"}},
		{"a key without the prefix", func(f *scanFixture) {
			f.ops = append(f.ops, sput("xa", "x1", 10, 20))
			s0(f).Entries = append(s0(f).Entries, ent("xa", "x1", 2))
		}, []string{"prefix"}},
		{"a key nobody wrote", func(f *scanFixture) {
			s0(f).Entries = append(s0(f).Entries, ent("kz", "z", 9))
		}, []string{"phantom"}},
		{"a key whose only write was refused", func(f *scanFixture) {
			f.refused = append(f.refused, failedOp{call: 50, in: Input{Kind: OpPut, Key: "ke", Value: "e1"}})
			s0(f).Entries = append(s0(f).Entries, ent("ke", "e1", 9))
		}, []string{"phantom"}},
		{"a key first written after the scan returned", func(f *scanFixture) {
			f.ops = append(f.ops, sput("ke", "e1", 135, 150))
			s0(f).Entries = append(s0(f).Entries, ent("ke", "e1", 9))
		}, []string{"phantom"}},
		{"a key deleted before the scan", func(f *scanFixture) {
			s0(f).Entries = append(s0(f).Entries, ent("kc", "c1", 3))
		}, []string{"stale"}},
		{"a value overwritten before the scan", func(f *scanFixture) {
			s0(f).Entries[1] = ent("kb", "b1", 2)
		}, []string{"stale"}},
		{"a value no write wrote", func(f *scanFixture) {
			s0(f).Entries[0].Value = "zz"
		}, []string{"invented"}},
		{"a refused write's value", func(f *scanFixture) {
			f.refused = append(f.refused, failedOp{call: 50, in: Input{Kind: OpPut, Key: "ka", Value: "a9"}})
			s0(f).Entries[0].Value = "a9"
		}, []string{"invented"}},
		{"an overwrite concurrent with the scan: the old value may show", func(f *scanFixture) {
			f.ops = append(f.ops, sput("ka", "a2", 105, 115))
			s0(f).Entries[1] = ent("kb", "b2", 4)
		}, nil},
		{"an overwrite acknowledged before the scan but concurrent with the write: either may show", func(f *scanFixture) {
			f.ops = append(f.ops, sput("kb", "b3", 75, 85))
		}, nil},
		{"a delete concurrent with the scan excuses the key", func(f *scanFixture) {
			f.ops = append(f.ops, sdel("ka", 120, 125))
			s0(f).Entries = s0(f).Entries[1:]
		}, nil},
		{"a delete before the key's write does not excuse it", func(f *scanFixture) {
			f.ops = append(f.ops, sdel("ka", 1, 5))
			s0(f).Entries = s0(f).Entries[1:]
		}, []string{"missing"}},
		{"a delete of unknown outcome invoked before the scan excuses the key", func(f *scanFixture) {
			f.ops = append(f.ops, unknown(sdel("ka", 25, 0)))
			s0(f).Entries = s0(f).Entries[1:]
		}, nil},
		{"a delete of unknown outcome invoked after the scan does not", func(f *scanFixture) {
			f.ops = append(f.ops, unknown(sdel("ka", 131, 0)))
			s0(f).Entries = s0(f).Entries[1:]
		}, []string{"missing"}},
		{"a compare-and-delete that kept the value does not excuse it", func(f *scanFixture) {
			f.ops = append(f.ops, op(2, Input{Kind: OpCAD, Key: "ka", Old: "zz"}, 100, Output{}, 120))
			s0(f).Entries = s0(f).Entries[1:]
		}, []string{"missing"}},
		{"a compare-and-delete that deleted, concurrent with the scan, does", func(f *scanFixture) {
			f.ops = append(f.ops, op(2, Input{Kind: OpCAD, Key: "ka", Old: "a1"}, 100, Output{Swapped: true}, 120))
			s0(f).Entries = s0(f).Entries[1:]
		}, nil},
		{"a write of unknown outcome may apply late: its value is never stale", func(f *scanFixture) {
			f.ops = append(f.ops, unknown(sput("kb", "bu", 45, 0)))
			s0(f).Entries[1] = ent("kb", "bu", 5)
		}, nil},
		{"a put of unknown outcome makes no key certain", func(f *scanFixture) {
			f.ops = append(f.ops, unknown(sput("ke", "e1", 5, 0)))
		}, nil},
		{"a stale mode scan may miss keys and return old values", func(f *scanFixture) {
			s0(f).Mode = ReadStale
			s0(f).Entries = []scanEntry{ent("kb", "b1", 2), ent("kc", "c1", 3)}
		}, nil},
		{"a stale mode scan may not invent values", func(f *scanFixture) {
			s0(f).Mode = ReadStale
			s0(f).Entries[0].Value = "zz"
		}, []string{"invented"}},
		{"a scan that failed is not checked", func(f *scanFixture) {
			s0(f).Err = "gridkv: unavailable"
			s0(f).Entries = nil
		}, nil},
		{"a page holds the keys up to its last one", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page, s0(f).Entries = 1, 1, []scanEntry{ent("kb", "b2", 4)} // skipped ka
		}, []string{"missing"}},
		{"a full page need not hold the keys after it", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page, s0(f).Entries = 1, 1, []scanEntry{ent("ka", "a1", 1)}
		}, nil},
		{"a page after a cursor", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page, s0(f).After, s0(f).Entries = 2, 2, "ka", []scanEntry{ent("kb", "b2", 4)}
		}, nil},
		{"a page short of its Limit holds every key after its cursor", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page, s0(f).After, s0(f).Entries = 2, 2, "ka", nil
		}, []string{"missing"}},
		{"a page with a key not after its cursor", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page, s0(f).After = 2, 2, "ka"
		}, []string{"cursor"}},
		{"a page over its Limit", func(f *scanFixture) {
			s0(f).Limit, s0(f).Page = 1, 1
		}, []string{"limit"}},
		{"two scans with two values at one version", func(f *scanFixture) {
			f.ops = append(f.ops, unknown(sput("kb", "b3", 105, 0)))
			f.scans = append(f.scans, &scanRecord{Scanner: "s1", Seq: 1, Node: "n1", Mode: ReadIndex, Call: 110, Return: 130,
				Entries: []scanEntry{ent("ka", "a1", 1), ent("kb", "b3", 4)}})
		}, []string{"disagree"}},
		{"a later scan at an older version", func(f *scanFixture) {
			f.scans = append(f.scans, &scanRecord{Scanner: "s1", Seq: 1, Node: "n1", Mode: ReadIndex, Call: 131, Return: 133,
				Entries: []scanEntry{ent("ka", "a1", 1), ent("kb", "b2", 3)}})
		}, []string{"version order"}},
		{"concurrent scans at either version", func(f *scanFixture) {
			f.ops = append(f.ops, sput("kb", "b3", 112, 128))
			f.scans = append(f.scans, &scanRecord{Scanner: "s1", Seq: 1, Node: "n1", Mode: ReadIndex, Call: 111, Return: 129,
				Entries: []scanEntry{ent("ka", "a1", 1), ent("kb", "b3", 5)}})
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newScanFixture()
			c.edit(f)
			sum := f.check()
			if c.kinds == nil {
				if len(sum.Problems) > 0 {
					t.Fatalf("problems in a clean run:\n%s", strings.Join(sum.Problems, "\n"))
				}
				return
			}
			for _, k := range c.kinds {
				if !slices.ContainsFunc(sum.Problems, func(p string) bool { return strings.HasPrefix(p, "scan "+k+":") }) {
					t.Errorf("no %q problem among:\n%s", k, strings.Join(sum.Problems, "\n"))
				}
			}
			t.Logf("\n%s", strings.Join(sum.Problems, "\n"))
		})
	}
}

// Incr's sums repeat, so a counter's value may be stored again after it
// was overwritten; and an Incr of unknown outcome may have stored any
// counter.
func TestScanCheckCounters(t *testing.T) {
	incr := func(delta, sum int64, call, ret int64) porcupine.Operation {
		return op(1, Input{Kind: OpIncr, Key: "ka", Delta: delta}, call, Output{Sum: sum}, ret)
	}
	base := []porcupine.Operation{
		sput("ka", "5", 10, 20),
		incr(2, 7, 30, 40),
		incr(-2, 5, 50, 60),
	}
	scan := func(v string) []*scanRecord {
		return []*scanRecord{{Scanner: "s0", Seq: 1, Node: "n0", Mode: ReadDefault, Call: 110, Return: 130,
			Entries: []scanEntry{ent("ka", v, 9)}}}
	}
	cases := []struct {
		name  string
		ops   []porcupine.Operation
		value string
		kinds []string
	}{
		{"a sum stored again", base, "5", nil},
		{"a sum overwritten", base, "7", []string{"stale"}},
		{"a sum no Incr answered", base, "6", []string{"invented"}},
		{"any counter after an Incr of unknown outcome", append(slices.Clone(base), unknown(incr(1, 0, 70, 0))), "6", nil},
		{"an old sum after an Incr of unknown outcome", append(slices.Clone(base), unknown(incr(1, 0, 70, 0))), "7", nil},
		{"not a non-counter after an Incr of unknown outcome", append(slices.Clone(base), unknown(incr(1, 0, 70, 0))), "x", []string{"invented"}},
		{"an Incr that counted makes the key certain", []porcupine.Operation{incr(2, 2, 10, 20)}, "", []string{"missing"}},
		{"an Incr refused makes nothing certain", []porcupine.Operation{
			op(1, Input{Kind: OpIncr, Key: "ka", Delta: 2}, 10, Output{Invalid: true}, 20)}, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			scans := scan(c.value)
			if c.value == "" {
				scans[0].Entries = nil
			}
			sum := checkScans(scanInput{Scans: scans, Ops: c.ops, Prefix: "k"})
			if c.kinds == nil && len(sum.Problems) > 0 {
				t.Fatalf("problems in a clean run:\n%s", strings.Join(sum.Problems, "\n"))
			}
			for _, k := range c.kinds {
				if !slices.ContainsFunc(sum.Problems, func(p string) bool { return strings.HasPrefix(p, "scan "+k+":") }) {
					t.Errorf("no %q problem among:\n%s", k, strings.Join(sum.Problems, "\n"))
				}
			}
			t.Logf("\n%s", strings.Join(sum.Problems, "\n"))
		})
	}
}

func TestScanCheckCounts(t *testing.T) {
	f := newScanFixture()
	f.scans = append(f.scans,
		&scanRecord{Scanner: "s1", Seq: 1, Mode: ReadStale, Call: 110, Return: 130, Entries: []scanEntry{ent("kb", "b1", 2)}},
		&scanRecord{Scanner: "s1", Seq: 2, Mode: ReadIndex, Call: 131, Return: 140, Err: "gridkv: timed out: context deadline exceeded"},
		&scanRecord{Scanner: "s1", Seq: 3, Mode: ReadIndex, Limit: 1, Page: 1, Call: 141, Return: 150, Entries: []scanEntry{ent("ka", "a1", 1)}},
	)
	sum := f.check()
	if sum.Scanners != 2 || sum.Scans != 4 || sum.Pages != 1 || sum.Stale != 1 || sum.Failed != 1 || sum.Checked != 2 ||
		sum.Entries != 3 || sum.Keys != 2 || sum.Required != 3 || sum.RequiredSteady != 2 || sum.Steady != 1 || sum.Judged != 1 || len(sum.Problems) != 0 || len(sum.Errors) != 1 {
		t.Fatalf("%+v", sum)
	}
	t.Log(sum.String())
}
