package fsm

import "fmt"

// A key's version names the write that gave the key its current value (or
// that deleted it): the epoch of its range's ownership at the time
// (RangeRecord.Epoch while Owned) in the high VersionEpochBits bits, and
// the write's sequence number in that ownership in the low VersionSeqBits
// bits. Each write that changes a range (a Set, a swap, a deletion, an
// Incr, an Expire) takes the range's next sequence number, starting at 1
// when the range becomes Owned at a new epoch.
//
// So versions order the writes of one range, hence of one key, even when
// the range moves between groups: a group writes a range only while it
// owns it at some epoch, the epoch grows with every handoff, and within
// one ownership the sequence grows by one per write, in log order, the
// same on every replica. A moved entry keeps the version it was written
// with. Versions of different ranges are not comparable.
//
// The split allows 32,767 ownerships of one range (each handoff takes two
// epochs) and 2.8e14 writes to one range in one ownership. A write past
// either bound fails with ErrBadCommand.
const (
	VersionEpochBits = 16
	VersionSeqBits   = 64 - VersionEpochBits
)

// MakeVersion packs an ownership epoch and a sequence number into a
// version; ok is false when either is out of bounds.
func MakeVersion(epoch, seq uint64) (v uint64, ok bool) {
	if epoch >= 1<<VersionEpochBits || seq >= 1<<VersionSeqBits {
		return 0, false
	}
	return epoch<<VersionSeqBits | seq, true
}

// VersionEpoch is the ownership epoch a version was written in.
func VersionEpoch(v uint64) uint64 { return v >> VersionSeqBits }

// VersionSeq is a version's sequence number within its ownership epoch.
func VersionSeq(v uint64) uint64 { return v & (1<<VersionSeqBits - 1) }

// nextVersion is the version the next write of rs (an Owned range) takes;
// ok is false past the bounds. Writing it, the applier increments rs.seq.
func (rs *rangeState) nextVersion() (uint64, bool) {
	return MakeVersion(rs.rec.Epoch, rs.seq+1)
}

// errVersionSpace is the Result.Err of a write past the version bounds.
func errVersionSpace(epoch uint64) error {
	return fmt.Errorf("%w: range at epoch %d has no version left", ErrBadCommand, epoch)
}
