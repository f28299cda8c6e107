// Package wire reads the fields node-to-node messages are built of:
// varints, single bytes and length-prefixed byte strings, as
// encoding/binary appends them.
package wire

import (
	"encoding/binary"
	"errors"
)

// ErrShort: a message ended before a field it should hold, or a length
// claims more bytes than follow.
var ErrShort = errors.New("malformed message")

// Reader reads fields from B, in order. The first failure sticks in Err
// (ErrShort) and later reads return zero values, so a decoder checks Err
// once, at the end.
type Reader struct {
	B   []byte
	Err error
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	if r.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.B)
	if n <= 0 {
		r.Err = ErrShort
		return 0
	}
	r.B = r.B[n:]
	return v
}

// Varint reads a signed (zig-zag) varint.
func (r *Reader) Varint() int64 {
	if r.Err != nil {
		return 0
	}
	v, n := binary.Varint(r.B)
	if n <= 0 {
		r.Err = ErrShort
		return 0
	}
	r.B = r.B[n:]
	return v
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.Err != nil || len(r.B) == 0 {
		r.Err = ErrShort
		return 0
	}
	v := r.B[0]
	r.B = r.B[1:]
	return v
}

// Bytes reads a uvarint length and that many bytes: a view of B (capped,
// so appending to it copies), nil when empty.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if r.Err != nil {
		return nil
	}
	if n > uint64(len(r.B)) {
		r.Err = ErrShort
		return nil
	}
	if n == 0 {
		return nil
	}
	v := r.B[:n:n]
	r.B = r.B[n:]
	return v
}
