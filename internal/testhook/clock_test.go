package testhook

import (
	"testing"
	"time"
)

func TestClockJump(t *testing.T) {
	c := NewClock(1)
	mono0, wall0 := c.Now()
	c.Jump(time.Second)
	mono1, wall1 := c.Now()
	if got := (mono1 - mono0) - (wall1 - wall0); got != int64(time.Second) {
		t.Fatalf("forward jump parted the readings by %v, want 1s", time.Duration(got))
	}
	c.Jump(-time.Hour) // stands still: never goes back
	mono2, wall2 := c.Now()
	mono3, wall3 := c.Now()
	if mono2 != mono1 || mono3 != mono1 {
		t.Fatalf("backward jump: readings %d, %d after %d, want the same", mono2, mono3, mono1)
	}
	if wall3 < wall2 || wall2 < wall1 {
		t.Fatal("the wall reading went back")
	}
}

func TestClockRate(t *testing.T) {
	c := NewClock(0.5)
	start := time.Now()
	mono0, wall0 := c.Now()
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < 20*time.Millisecond {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatal("no time passed")
		}
	}
	mono1, wall1 := c.Now()
	elapsed := time.Since(start)
	if d := time.Duration(mono1 - mono0); d > elapsed/2+time.Millisecond || d < 0 {
		t.Fatalf("rate 0.5 clock ran %v in %v", d, elapsed)
	}
	if mono1-mono0 != wall1-wall0 {
		t.Fatalf("monotonic %d and wall %d readings ran apart without a jump", mono1-mono0, wall1-wall0)
	}
}

func TestClockStall(t *testing.T) {
	c := NewClock(1)
	c.Stall(30 * time.Millisecond)
	start := time.Now()
	mono, _ := c.Now()
	if took := time.Since(start); took < 25*time.Millisecond {
		t.Fatalf("Now returned after %v during a 30ms stall", took)
	}
	after, _ := c.Now()
	if after-mono < int64(25*time.Millisecond) {
		t.Fatalf("the stalled call's reading was not taken before the stall: %v before the next", time.Duration(after-mono))
	}
}
