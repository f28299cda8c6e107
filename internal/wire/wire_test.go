package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

func TestReader(t *testing.T) {
	b := binary.AppendUvarint(nil, 300)
	b = binary.AppendVarint(b, -7)
	b = append(b, 9)
	b = binary.AppendUvarint(b, 3)
	b = append(b, "abc"...)
	b = binary.AppendUvarint(b, 0)
	r := Reader{B: b}
	if u, v, c, s, e := r.Uvarint(), r.Varint(), r.Byte(), r.Bytes(), r.Bytes(); u != 300 || v != -7 || c != 9 ||
		string(s) != "abc" || cap(s) != 3 || e != nil || r.Err != nil || len(r.B) != 0 {
		t.Fatalf("read %d %d %d %q %v, err %v, %d left", u, v, c, s, e, r.Err, len(r.B))
	}
	for i := range b {
		r := Reader{B: b[:i]}
		r.Uvarint()
		r.Varint()
		r.Byte()
		r.Bytes()
		r.Bytes()
		if !errors.Is(r.Err, ErrShort) {
			t.Fatalf("cut at %d of %d bytes: %v", i, len(b), r.Err)
		}
	}
}
