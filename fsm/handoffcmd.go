package fsm

import (
	"slices"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/gridkv/gridkv/fsm/fsmpb"
)

// Handoff command constructors (see handoff.go for what each does), each
// with its Append form, byte for byte what Encode produces for it
// (TestAppendMatchesEncode). Each command must be a log entry of its own:
// inside a Batch it is ErrBadCommand. Epochs are the handoff's epoch h,
// except Freeze's, which is the Owned epoch e = h-1.

// FreezeOp is the Freeze command for the source: range r, Owned at epoch e
// here, becomes Frozen at e+1 toward group target.
func FreezeOp(r int, e uint64, target int) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Freeze{Freeze: &fsmpb.Freeze{
		Range: uint32(r), Epoch: e, Target: int64(target)}}}
}

// IncomingOp is the Incoming command for the target: range r becomes
// Incoming at epoch h from group source, which announced count entries of
// bytes bytes (its Frozen record's Count and Bytes).
func IncomingOp(r int, h uint64, source int, count, bytes int64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Incoming{Incoming: &fsmpb.Incoming{
		Range: uint32(r), Epoch: h, Source: int64(source), Count: count, Bytes: bytes}}}
}

// ChunkOp is the Chunk command for the target: the page of range r's copy
// at epoch h that follows key after (an Export page). trailer, read only
// when last, is the source's RangeTally of the Frozen range.
func ChunkOp(r int, h uint64, after string, entries []RangeEntry, last bool, trailer Tally) *fsmpb.Command {
	c := &fsmpb.Chunk{Range: uint32(r), Epoch: h, After: []byte(after), Last: last,
		Trailer: &fsmpb.Tally{Count: trailer.Count, Bytes: trailer.Bytes, Digest: trailer.Digest}}
	for _, e := range entries {
		c.Entries = append(c.Entries, &fsmpb.ChunkEntry{Key: []byte(e.Key), Value: e.Value,
			Version: e.Version, ExpireAt: e.ExpireAt})
	}
	return &fsmpb.Command{Op: &fsmpb.Command_Chunk{Chunk: c}}
}

// ReleaseOp is the Release command for the source, the handoff's commit
// point: range r, Frozen at h, becomes Gone at h+1 and its data is dropped.
func ReleaseOp(r int, h uint64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Release{Release: rangeEpoch(r, h)}}
}

// UnfreezeOp is the Unfreeze command for the source: range r, Frozen at h,
// is Owned again at h+1, with its data.
func UnfreezeOp(r int, h uint64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Unfreeze{Unfreeze: rangeEpoch(r, h)}}
}

// ActivateOp is the Activate command for the target: range r, Sealed at h,
// becomes Owned at h+1. Propose it only once the source shows Gone(h+1).
func ActivateOp(r int, h uint64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Activate{Activate: rangeEpoch(r, h)}}
}

// AbortOp is the Abort command for the target: range r, Incoming or Sealed
// at h (or Absent or Gone below h), becomes Absent at h. Abort a Sealed
// range only on the source's verdict.
func AbortOp(r int, h uint64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Abort{Abort: rangeEpoch(r, h)}}
}

func rangeEpoch(r int, h uint64) *fsmpb.RangeEpoch {
	return &fsmpb.RangeEpoch{Range: uint32(r), Epoch: h}
}

// The Command oneof's field numbers of the handoff commands.
const (
	fieldFreeze   protowire.Number = 6
	fieldIncoming protowire.Number = 7
	fieldChunk    protowire.Number = 8
	fieldRelease  protowire.Number = 9
	fieldUnfreeze protowire.Number = 10
	fieldActivate protowire.Number = 11
	fieldAbort    protowire.Number = 12
)

// AppendFreeze appends an encoded Freeze command to b.
func AppendFreeze(b []byte, r int, e uint64, target int) []byte {
	n := sizeVarintField(1, int64(uint32(r))) + sizeVarintField(2, int64(e)) + sizeVarintField(3, int64(target))
	b = appendMessageHeader(b, fieldFreeze, n)
	b = appendVarintField(b, 1, int64(uint32(r)))
	b = appendVarintField(b, 2, int64(e))
	return appendVarintField(b, 3, int64(target))
}

// AppendIncoming appends an encoded Incoming command to b.
func AppendIncoming(b []byte, r int, h uint64, source int, count, bytes int64) []byte {
	n := sizeVarintField(1, int64(uint32(r))) + sizeVarintField(2, int64(h)) + sizeVarintField(3, int64(source)) +
		sizeVarintField(4, count) + sizeVarintField(5, bytes)
	b = appendMessageHeader(b, fieldIncoming, n)
	b = appendVarintField(b, 1, int64(uint32(r)))
	b = appendVarintField(b, 2, int64(h))
	b = appendVarintField(b, 3, int64(source))
	b = appendVarintField(b, 4, count)
	return appendVarintField(b, 5, bytes)
}

// AppendChunk appends an encoded Chunk command to b.
func AppendChunk(b []byte, r int, h uint64, after string, entries []RangeEntry, last bool, trailer Tally) []byte {
	lastBit := int64(0)
	if last {
		lastBit = 1
	}
	tally := sizeVarintField(1, trailer.Count) + sizeVarintField(2, trailer.Bytes) + sizeVarintField(3, int64(trailer.Digest))
	n := sizeVarintField(1, int64(uint32(r))) + sizeVarintField(2, int64(h)) + sizeBytesField(3, len(after)) +
		sizeVarintField(5, lastBit) + protowire.SizeTag(6) + protowire.SizeBytes(tally)
	for _, e := range entries {
		n += protowire.SizeTag(4) + protowire.SizeBytes(chunkEntrySize(e))
	}
	b = appendMessageHeader(b, fieldChunk, n)
	b = appendVarintField(b, 1, int64(uint32(r)))
	b = appendVarintField(b, 2, int64(h))
	b = appendStringField(b, 3, after)
	for _, e := range entries {
		b = appendMessageHeader(b, 4, chunkEntrySize(e))
		b = appendStringField(b, 1, e.Key)
		b = appendBytesField(b, 2, e.Value)
		b = appendVarintField(b, 3, int64(e.Version))
		b = appendVarintField(b, 4, e.ExpireAt)
	}
	b = appendVarintField(b, 5, lastBit)
	b = appendMessageHeader(b, 6, tally)
	b = appendVarintField(b, 1, trailer.Count)
	b = appendVarintField(b, 2, trailer.Bytes)
	return appendVarintField(b, 3, int64(trailer.Digest))
}

func chunkEntrySize(e RangeEntry) int {
	return sizeBytesField(1, len(e.Key)) + sizeBytesField(2, len(e.Value)) +
		sizeVarintField(3, int64(e.Version)) + sizeVarintField(4, e.ExpireAt)
}

// AppendRelease appends an encoded Release command to b.
func AppendRelease(b []byte, r int, h uint64) []byte { return appendRangeEpoch(b, fieldRelease, r, h) }

// AppendUnfreeze appends an encoded Unfreeze command to b.
func AppendUnfreeze(b []byte, r int, h uint64) []byte {
	return appendRangeEpoch(b, fieldUnfreeze, r, h)
}

// AppendActivate appends an encoded Activate command to b.
func AppendActivate(b []byte, r int, h uint64) []byte {
	return appendRangeEpoch(b, fieldActivate, r, h)
}

// AppendAbort appends an encoded Abort command to b.
func AppendAbort(b []byte, r int, h uint64) []byte { return appendRangeEpoch(b, fieldAbort, r, h) }

func appendRangeEpoch(b []byte, field protowire.Number, r int, h uint64) []byte {
	n := sizeVarintField(1, int64(uint32(r))) + sizeVarintField(2, int64(h))
	b = appendMessageHeader(b, field, n)
	b = appendVarintField(b, 1, int64(uint32(r)))
	return appendVarintField(b, 2, int64(h))
}

// appendMessageHeader appends the tag and length of a message field of n
// bytes, making room for the whole field.
func appendMessageHeader(b []byte, num protowire.Number, n int) []byte {
	b = slices.Grow(b, protowire.SizeTag(num)+protowire.SizeBytes(n))
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}
