package fsm

import "fmt"

// A key's version names the write that gave the key its current value:
// the epoch of its range's ownership at the time (RangeRecord.Epoch while
// Owned) in the high VersionEpochBits bits, and the log index of the write
// in its group in the low VersionIndexBits bits.
//
// Versions order the writes of one range, hence of one key, across range
// moves: a group writes a range only while it owns it at some epoch, the
// epoch grows with every handoff, and within one ownership the log index
// grows. A moved entry keeps the version it was written with. Versions of
// different ranges are not comparable.
//
// The bit split allows about 1 million ownerships of one range (each
// handoff takes two epochs) and about 17.6 trillion log entries in one
// group. A write past either bound fails with ErrBadCommand.
const (
	VersionEpochBits = 20
	VersionIndexBits = 64 - VersionEpochBits
)

// MakeVersion packs an ownership epoch and a log index into a version;
// ok is false when either is out of bounds.
func MakeVersion(epoch, index uint64) (v uint64, ok bool) {
	if epoch >= 1<<VersionEpochBits || index >= 1<<VersionIndexBits {
		return 0, false
	}
	return epoch<<VersionIndexBits | index, true
}

// VersionEpoch is the ownership epoch a version was written in.
func VersionEpoch(v uint64) uint64 { return v >> VersionIndexBits }

// VersionIndex is the log index a version was written at, in the group
// that owned the range at its epoch.
func VersionIndex(v uint64) uint64 { return v & (1<<VersionIndexBits - 1) }

// errVersionSpace is the Result.Err of a write past the version bounds.
func errVersionSpace(epoch, index uint64) error {
	return fmt.Errorf("%w: epoch %d or log index %d beyond the version bounds", ErrBadCommand, epoch, index)
}
