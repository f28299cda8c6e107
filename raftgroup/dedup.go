package raftgroup

// dedup recognizes request ids a connection has already delivered, so that
// a duplicated frame is served once. Ids come from the sender's counter,
// increasing but possibly reordered on the way (the fault seam reorders
// frames; real networks duplicate retransmitted data only below TCP, but a
// node-to-node write served twice could apply again after a later write, so
// the mux does not rely on that). It remembers the last dedupWindow ids;
// an id older than that counts as seen: dropping a long-delayed request is
// safe (its caller times out, its outcome unknown), serving it twice is not.
type dedup struct {
	max  uint64
	bits [dedupWindow / 64]uint64
}

const dedupWindow = 1 << 16

// first reports whether id has not been seen before, and records it.
func (d *dedup) first(id uint64) bool {
	switch {
	case id > d.max:
		if id-d.max >= dedupWindow {
			d.bits = [dedupWindow / 64]uint64{}
		} else {
			for i := d.max + 1; i <= id; i++ { // the slots of ids a window older
				d.bits[(i%dedupWindow)/64] &^= 1 << (i % 64)
			}
		}
		d.max = id
	case d.max-id >= dedupWindow:
		return false // too old to tell: treat as a duplicate
	}
	word, bit := &d.bits[(id%dedupWindow)/64], uint64(1)<<(id%64)
	if *word&bit != 0 {
		return false
	}
	*word |= bit
	return true
}
