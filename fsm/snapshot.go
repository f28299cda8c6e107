package fsm

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"github.com/hashicorp/raft"
)

// Snapshot stream format, version 6 (the magic's last byte):
//
//	magic "GKV6", uvarint applied index, the cluster's layout (writeLayout;
//	all zero in a group that does not hold it), uvarint number of ranges, then
//	per range, in increasing range number:
//	  uvarint range number, the record:
//	    one byte state, uvarint epoch, varint peer, uvarint freeze index,
//	    varint since, varint count, varint bytes,
//	    uvarint cursor length, cursor,
//	    varint got count, varint got bytes, uvarint got digest;
//	  uvarint seq (the sequence number of the range's last write, version.go);
//	  per entry: uvarint key length (> 0), uvarint value length,
//	             uvarint version, varint expireAt, key, value;
//	  a zero key length as the range's terminator.
//
// Nothing follows the last range. It is written and read entry by entry;
// no buffer holds the whole state. Version 2 had the state and epoch alone
// as the record; version 3 had no layout; version 4 no seq; version 5 no
// recovered groups in the layout.
var snapMagic = [4]byte{'G', 'K', 'V', '6'}

// retainer is what a snapshot sink implements to keep a snapshot by
// reference instead of as bytes (raftgroup's snapshot store): Retain
// returns true if it keeps w and will write it (with WriteTo) when the
// bytes are needed.
type retainer interface {
	Retain(w io.WriterTo) bool
}

type snapRange struct {
	num     uint32
	rec     RangeRecord
	seq     uint64
	entries []entry
}

// snapshot is the state as of one applied index. It references the stored
// keys and values, which are never mutated, instead of copying them; once
// taken it never changes, so WriteTo may run any number of times, even
// after Release.
type snapshot struct {
	applied uint64
	layout  Layout
	ranges  []snapRange
}

var (
	_ raft.FSMSnapshot = (*snapshot)(nil)
	_ io.WriterTo      = (*snapshot)(nil)
)

// Snapshot captures the state as of the last applied entry: every range's
// record and the references to its entries (not their bytes), one range
// at a time. Persist then streams them.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	snap := &snapshot{applied: f.applied.Load(), layout: f.Layout()}
	for _, rs := range f.table.Load().ranges {
		if rs == nil {
			continue
		}
		rs.mu.RLock()
		sr := snapRange{num: rs.num, rec: rs.rec, seq: rs.seq, entries: make([]entry, 0, rs.tab.n)}
		rs.tab.all(func(e entry) { sr.entries = append(sr.entries, e) })
		rs.mu.RUnlock()
		snap.ranges = append(snap.ranges, sr)
	}
	return snap, nil
}

// Persist writes the snapshot to sink, entry by entry, unless the sink
// retains it by reference (see retainer): then it writes nothing and only
// closes the sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if r, ok := sink.(retainer); ok && r.Retain(s) {
		return sink.Close()
	}
	if _, err := s.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

// WriteTo writes the snapshot stream to w: the bytes Persist writes to a
// sink that does not retain it.
func (s *snapshot) WriteTo(out io.Writer) (int64, error) {
	cw := &countingWriter{w: out}
	w := bufio.NewWriterSize(cw, 64<<10)
	var scratch [4 * binary.MaxVarintLen64]byte
	w.Write(snapMagic[:])
	w.Write(binary.AppendUvarint(scratch[:0], s.applied))
	writeLayout(w, s.layout)
	w.Write(binary.AppendUvarint(scratch[:0], uint64(len(s.ranges))))
	for _, sr := range s.ranges {
		w.Write(binary.AppendUvarint(scratch[:0], uint64(sr.num)))
		writeRecord(w, sr.rec)
		w.Write(binary.AppendUvarint(scratch[:0], sr.seq))
		for _, e := range sr.entries {
			h := e.header()
			b := binary.AppendUvarint(scratch[:0], uint64(h.klen))
			b = binary.AppendUvarint(b, uint64(h.vlen))
			b = binary.AppendUvarint(b, h.version)
			w.Write(binary.AppendVarint(b, h.expireAt))
			w.WriteString(e.key(h))
			if _, err := w.Write(e.value(h)); err != nil {
				return cw.n, err
			}
		}
		w.WriteByte(0)
	}
	err := w.Flush()
	return cw.n, err
}

// writeRecord writes rec in the snapshot format.
func writeRecord(w *bufio.Writer, rec RangeRecord) {
	var scratch [8 * binary.MaxVarintLen64]byte
	b := append(scratch[:0], byte(rec.State))
	b = binary.AppendUvarint(b, rec.Epoch)
	b = binary.AppendVarint(b, int64(rec.Peer))
	b = binary.AppendUvarint(b, rec.FreezeIndex)
	b = binary.AppendVarint(b, rec.Since)
	b = binary.AppendVarint(b, rec.Count)
	b = binary.AppendVarint(b, rec.Bytes)
	w.Write(binary.AppendUvarint(b, uint64(len(rec.Cursor))))
	w.WriteString(rec.Cursor)
	b = binary.AppendVarint(scratch[:0], rec.Got.Count)
	b = binary.AppendVarint(b, rec.Got.Bytes)
	w.Write(binary.AppendUvarint(b, rec.Got.Digest))
}

// readRecord reads a record written by writeRecord.
func readRecord(r *bufio.Reader) (RangeRecord, error) {
	state, err := r.ReadByte()
	if err != nil {
		return RangeRecord{}, restoreErr(err)
	}
	sr := &varintReader{r: r}
	rec := RangeRecord{State: RangeState(state), Epoch: sr.uvarint(), Peer: int(sr.varint()),
		FreezeIndex: sr.uvarint(), Since: sr.varint(), Count: sr.varint(), Bytes: sr.varint()}
	if sr.err != nil {
		return RangeRecord{}, sr.err
	}
	n, err := readLen(r)
	if err != nil {
		return RangeRecord{}, err
	}
	cursor := make([]byte, n)
	if _, err := io.ReadFull(r, cursor); err != nil {
		return RangeRecord{}, restoreErr(io.ErrUnexpectedEOF)
	}
	rec.Cursor = string(cursor)
	rec.Got = Tally{Count: sr.varint(), Bytes: sr.varint(), Digest: sr.uvarint()}
	return rec, sr.err
}

// varintReader reads varints until the first error, which it keeps.
type varintReader struct {
	r   *bufio.Reader
	err error
}

func (v *varintReader) uvarint() uint64 {
	if v.err != nil {
		return 0
	}
	x, err := binary.ReadUvarint(v.r)
	if err != nil {
		v.err = restoreErr(err)
	}
	return x
}

func (v *varintReader) varint() int64 {
	if v.err != nil {
		return 0
	}
	x, err := binary.ReadVarint(v.r)
	if err != nil {
		v.err = restoreErr(err)
	}
	return x
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Release does nothing: a retained snapshot is written after raft releases
// it, so the references stay for the garbage collector to reclaim.
func (s *snapshot) Release() {}

// Restore replaces the whole state with the snapshot read from rc. It
// validates every field: the format version, lengths and counts within
// bounds, range numbers in bounds and increasing, known states, records
// holding only their state's fields, entries only in ranges whose state
// holds data (Owned, Frozen, Incoming, Sealed) and matching the record's
// counts (and, for a staged copy, its digest), no duplicate key, and
// nothing after the last range. On an error the state is left as it was.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReaderSize(rc, 64<<10)
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return restoreErr(err)
	}
	if magic != snapMagic {
		return errors.New("fsm: restore: not a gridkv snapshot of this version")
	}
	applied, err := binary.ReadUvarint(r)
	if err != nil {
		return restoreErr(err)
	}
	lay, err := readLayout(r)
	if err != nil {
		return err
	}
	if !f.opts.Layout && lay.Epoch != 0 {
		return errors.New("fsm: restore: a layout in a group that does not hold it")
	}
	nranges, err := binary.ReadUvarint(r)
	if err != nil {
		return restoreErr(err)
	}
	if nranges > uint64(f.rangeBound()) {
		return fmt.Errorf("fsm: restore: %d ranges is over the limit", nranges)
	}
	table := &rangeTable{}
	var used, count int64
	prev := int64(-1)
	for i := uint64(0); i < nranges; i++ {
		rs, err := f.readRange(r, prev)
		if err != nil {
			return err
		}
		prev = int64(rs.num)
		table.grow(int(rs.num) + 1)
		table.ranges[rs.num] = rs
		used += rs.used
		count += rs.count
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return errors.New("fsm: restore: data after the last range")
	}

	f.table.Store(table)
	f.layout.Store(&lay)
	f.due = f.due[:0]
	f.order = histOrder{limit: f.order.limit, byteLimit: f.order.byteLimit}
	f.owned, f.ownedUsed = 0, 0
	for s := range f.inState {
		f.inState[s].Store(0)
	}
	for _, rs := range table.ranges {
		if rs == nil {
			continue
		}
		f.inState[rs.rec.State].Add(1)
		if rs.rec.State == Owned {
			f.owned++
			f.ownedUsed += rs.used
		}
		f.requeue(rs)
	}
	f.limit = f.share(f.owned)
	f.used.Store(used)
	f.count.Store(count)
	f.advance(applied)
	return nil
}

// readRange reads one range's record and entries; its number must be
// greater than prev.
func (f *FSM) readRange(r *bufio.Reader, prev int64) (*rangeState, error) {
	num, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, restoreErr(err)
	}
	if int64(num) <= prev || !f.inBounds(int64(num)) {
		return nil, fmt.Errorf("fsm: restore: range %d out of order or out of bounds", num)
	}
	rec, err := readRecord(r)
	if err != nil {
		return nil, err
	}
	if !rec.State.known() {
		return nil, fmt.Errorf("fsm: restore: range %d has unknown state %d", num, rec.State)
	}
	if !rec.valid() {
		return nil, fmt.Errorf("fsm: restore: range %d has a record with fields its state does not have: %+v", num, rec)
	}
	rs := newRangeState(uint32(num))
	rs.rec = rec
	if rs.seq, err = binary.ReadUvarint(r); err != nil {
		return nil, restoreErr(err)
	}
	// The range's history starts at the snapshot.
	rs.hist.from = rs.currentVersion()
	var got Tally // of the entries read
	var scratch []byte
	for {
		klen, err := readLen(r)
		if err != nil {
			return nil, err
		}
		if klen == 0 {
			break
		}
		if !rs.rec.State.holdsData() {
			return nil, fmt.Errorf("fsm: restore: range %d holds entries in state %v", num, rs.rec.State)
		}
		vlen, err := readLen(r)
		if err != nil {
			return nil, err
		}
		version, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, restoreErr(err)
		}
		expireAt, err := binary.ReadVarint(r)
		if err != nil {
			return nil, restoreErr(err)
		}
		// One allocation, in the layout newEntry makes: key and value are
		// read in place.
		var kb, mb [binary.MaxVarintLen64]byte
		kh := binary.AppendUvarint(kb[:0], uint64(klen))
		mid := appendMid(mb[:0], vlen, version, expireAt)
		buf := make([]byte, len(kh)+klen+len(mid)+vlen)
		koff, voff := len(kh), len(kh)+klen+len(mid)
		copy(buf, kh)
		copy(buf[koff+klen:], mid)
		if _, err := io.ReadFull(r, buf[koff:koff+klen]); err != nil {
			return nil, restoreErr(io.ErrUnexpectedEOF)
		}
		if _, err := io.ReadFull(r, buf[voff:]); err != nil {
			return nil, restoreErr(io.ErrUnexpectedEOF)
		}
		e := entry{p: unsafe.SliceData(buf)}
		if k := e.key(e.header()); rs.tab.find(k) >= 0 {
			return nil, fmt.Errorf("fsm: restore: range %d holds key %q twice", num, k)
		}
		rs.tab.set(e)
		if expireAt != 0 {
			rs.expiries = append(rs.expiries, expiry{at: expireAt, e: e})
		}
		rs.used += int64(klen + vlen)
		rs.count++
		if rec.State == Incoming || rec.State == Sealed {
			var d uint64
			d, scratch = entryDigest(e, scratch)
			got.Digest += d
		}
	}
	heap.Init(&rs.expiries)
	got.Count, got.Bytes = rs.count, rs.used
	if err := checkHeld(rec, got); err != nil {
		return nil, fmt.Errorf("fsm: restore: range %d: %w", num, err)
	}
	return rs, nil
}

// checkHeld checks the entries a range holds (their tally is got; its
// digest is computed only for Incoming and Sealed) against its record: a
// Frozen range holds what it froze, an Incoming or Sealed one what its
// record says it got, and a Sealed one what was announced.
func checkHeld(rec RangeRecord, got Tally) error {
	switch rec.State {
	case Frozen:
		if got.Count != rec.Count || got.Bytes != rec.Bytes {
			return fmt.Errorf("frozen with %d entries of %d bytes, froze %d of %d", got.Count, got.Bytes, rec.Count, rec.Bytes)
		}
	case Incoming, Sealed:
		if got != rec.Got {
			return fmt.Errorf("%v holds %+v, its record says %+v", rec.State, got, rec.Got)
		}
		if rec.State == Sealed && (got.Count != rec.Count || got.Bytes != rec.Bytes) {
			return fmt.Errorf("sealed with %d entries of %d bytes, announced %d of %d", got.Count, got.Bytes, rec.Count, rec.Bytes)
		}
	}
	return nil
}

func restoreErr(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("fsm: restore: %w", err)
}

func readLen(r *bufio.Reader) (int, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, restoreErr(err)
	}
	if n > maxField {
		return 0, fmt.Errorf("fsm: restore: field of %d bytes is over the limit", n)
	}
	return int(n), nil
}
