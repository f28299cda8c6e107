// Package faultnet decides the fate of each message sent between two nodes:
// delivered, dropped, delayed or duplicated, per direction. Transports that
// accept a *Net consult it once per message; a nil *Net delivers everything
// and costs one nil check.
//
// Usage:
//
//	n := faultnet.New(seed)
//	n.Partition("a:1", "b:2")                       // both directions
//	n.Set("a:1", "c:3", faultnet.Rule{Drop: 0.2})   // one direction
//	n.HealAll()
package faultnet

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Rule is what happens to messages from one node to another.
type Rule struct {
	Cut       bool          // drop every message (a partition)
	Drop      float64       // probability a message is lost
	Duplicate float64       // probability a message is delivered twice
	Delay     time.Duration // added to every message
	Jitter    time.Duration // extra random delay in [0, Jitter); reorders messages
	// HoldUntil holds every message until this moment (at least): a paused
	// node's traffic, delivered when it resumes.
	HoldUntil time.Time
}

// Verdict is the fate of one message.
type Verdict struct {
	Copies int           // 0 = dropped, 1 = delivered, 2 = duplicated
	Delay  time.Duration // wait before delivering
}

// Net holds the rules between node addresses. Safe for concurrent use.
type Net struct {
	mu    sync.Mutex
	rules map[[2]string]Rule
	rng   *rand.Rand
}

// New returns a Net with no faults; seed makes the random draws repeatable.
func New(seed uint64) *Net {
	return &Net{rules: make(map[[2]string]Rule), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Set replaces the rule for messages from -> to.
func (n *Net) Set(from, to string, r Rule) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if r == (Rule{}) {
		delete(n.rules, [2]string{from, to})
		return
	}
	n.rules[[2]string{from, to}] = r
}

// Partition cuts both directions between a and b.
func (n *Net) Partition(a, b string) {
	n.Set(a, b, Rule{Cut: true})
	n.Set(b, a, Rule{Cut: true})
}

// Isolate cuts node a off from every node in others, both directions.
func (n *Net) Isolate(a string, others ...string) {
	for _, b := range others {
		if b != a {
			n.Partition(a, b)
		}
	}
}

// Heal removes the rules between a and b, both directions.
func (n *Net) Heal(a, b string) {
	n.Set(a, b, Rule{})
	n.Set(b, a, Rule{})
}

// HealAll removes every rule.
func (n *Net) HealAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.rules)
}

// Cut reports whether messages from -> to are all dropped right now.
func (n *Net) Cut(from, to string) bool {
	if n == nil {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rules[[2]string{from, to}].Cut
}

// Decide draws the fate of one message from -> to.
func (n *Net) Decide(from, to string) Verdict {
	if n == nil {
		return Verdict{Copies: 1}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	r, ok := n.rules[[2]string{from, to}]
	if !ok {
		return Verdict{Copies: 1}
	}
	if r.Cut || (r.Drop > 0 && n.rng.Float64() < r.Drop) {
		return Verdict{}
	}
	v := Verdict{Copies: 1, Delay: r.Delay}
	if r.Duplicate > 0 && n.rng.Float64() < r.Duplicate {
		v.Copies = 2
	}
	if r.Jitter > 0 {
		v.Delay += time.Duration(n.rng.Int64N(int64(r.Jitter)))
	}
	if !r.HoldUntil.IsZero() {
		v.Delay = max(v.Delay, time.Until(r.HoldUntil))
	}
	return v
}
