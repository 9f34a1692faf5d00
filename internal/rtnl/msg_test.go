package rtnl

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAttrsRoundTrip: attributes appended (a NUL-terminated string padded to
// 4 bytes, a nested one with its flag, a u32) read back with their types and
// values, and the walk stops at a length that overruns the buffer instead of
// reading past it.
func TestAttrsRoundTrip(t *testing.T) {
	b := AppendAttrString(nil, 1, "weft") // 4+5 bytes, padded to 12
	if len(b) != 12 {
		t.Fatalf("string attribute is %d bytes, want 12 (4 header + 5 + 3 padding)", len(b))
	}
	b = appendAttr(b, 2|unix.NLA_F_NESTED, appendAttrU32(nil, 3, 7))
	b = appendAttrU32(b, 4, 0xdeadbeef)
	var got []uint16
	for a := WalkAttrs(b); a.Next(); {
		got = append(got, a.Type)
		switch a.Type {
		case 1:
			if !bytes.Equal(a.Value, []byte("weft\x00")) {
				t.Errorf("attribute 1 = %q, want %q", a.Value, "weft\x00")
			}
		case 2:
			in := WalkAttrs(a.Value)
			if !in.Next() || in.Type != 3 || native.Uint32(in.Value) != 7 {
				t.Errorf("nested attribute 2 holds type %d value %x, want 3 and 7", in.Type, in.Value)
			}
		case 4:
			if native.Uint32(a.Value) != 0xdeadbeef {
				t.Errorf("attribute 4 = %x, want deadbeef", a.Value)
			}
		}
	}
	if len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 4 {
		t.Errorf("walked types %v, want [1 2 4] (nested flag cleared)", got)
	}
	bad := append(appendAttrU32(nil, 5, 1), 200, 0, 6, 0) // second claims 200 bytes
	n := 0
	for a := WalkAttrs(bad); a.Next(); {
		n++
	}
	if n != 1 {
		t.Errorf("walked %d attributes of a buffer whose second overruns it, want 1", n)
	}
}
