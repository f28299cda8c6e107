package faultnet

import (
	"testing"
	"time"
)

func TestNilNetDeliversEverything(t *testing.T) {
	var n *Net
	if v := n.Decide("a", "b"); v.Copies != 1 || v.Delay != 0 {
		t.Fatalf("nil net: %+v", v)
	}
	if n.Cut("a", "b") {
		t.Fatal("nil net cuts")
	}
}

func TestPartitionIsBothWaysAndHeals(t *testing.T) {
	n := New(1)
	n.Partition("a", "b")
	if !n.Cut("a", "b") || !n.Cut("b", "a") || n.Decide("a", "b").Copies != 0 {
		t.Fatal("partition not applied both ways")
	}
	if n.Cut("a", "c") {
		t.Fatal("partition leaked to another pair")
	}
	n.Heal("a", "b")
	if n.Cut("a", "b") || n.Decide("b", "a").Copies != 1 {
		t.Fatal("heal did not restore the link")
	}
	n.Isolate("a", "a", "b", "c")
	if !n.Cut("c", "a") || !n.Cut("a", "b") || n.Cut("b", "c") {
		t.Fatal("isolate wrong")
	}
	n.HealAll()
	if n.Cut("c", "a") {
		t.Fatal("HealAll left a cut")
	}
}

func TestRatesAndDelays(t *testing.T) {
	n := New(7)
	n.Set("a", "b", Rule{Drop: 0.25, Duplicate: 0.5, Delay: time.Millisecond, Jitter: time.Millisecond})
	const draws = 20000
	var dropped, dup int
	for i := 0; i < draws; i++ {
		v := n.Decide("a", "b")
		switch v.Copies {
		case 0:
			dropped++
			continue
		case 2:
			dup++
		}
		if v.Delay < time.Millisecond || v.Delay >= 2*time.Millisecond {
			t.Fatalf("delay %v outside [1ms, 2ms)", v.Delay)
		}
	}
	if dropped < draws*22/100 || dropped > draws*28/100 {
		t.Fatalf("dropped %d of %d, want about 25%%", dropped, draws)
	}
	delivered := draws - dropped
	if dup < delivered*45/100 || dup > delivered*55/100 {
		t.Fatalf("duplicated %d of %d delivered, want about 50%%", dup, delivered)
	}
	if v := n.Decide("b", "a"); v.Copies != 1 {
		t.Fatal("rule applied in the other direction")
	}
}

// The same seed gives the same verdicts.
func TestSeeded(t *testing.T) {
	a, b := New(42), New(42)
	r := Rule{Drop: 0.5, Jitter: time.Second}
	a.Set("x", "y", r)
	b.Set("x", "y", r)
	for i := 0; i < 100; i++ {
		if a.Decide("x", "y") != b.Decide("x", "y") {
			t.Fatalf("draw %d differs", i)
		}
	}
}

func TestHoldUntil(t *testing.T) {
	n := New(1)
	until := time.Now().Add(time.Hour)
	n.Set("a", "b", Rule{HoldUntil: until})
	if v := n.Decide("a", "b"); v.Copies != 1 || v.Delay < 59*time.Minute {
		t.Fatalf("held message: %+v", v)
	}
	n.Set("a", "b", Rule{HoldUntil: time.Now().Add(-time.Second)})
	if v := n.Decide("a", "b"); v.Copies != 1 || v.Delay != 0 {
		t.Fatalf("hold in the past: %+v", v)
	}
}
