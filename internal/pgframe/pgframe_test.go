package pgframe

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestLen(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  []byte
		want int
	}{
		{"empty body", []byte{'S', 0, 0, 0, 4}, 0},
		{"body", []byte{'Q', 0, 0, 1, 0}, 252},
		{"length below itself", []byte{'Q', 0, 0, 0, 3}, -1},
		{"largest", []byte{'d', 0x3f, 0xff, 0xff, 0xff}, MaxLen - 4},
		{"over the bound", []byte{'d', 0x40, 0, 0, 0}, -1},
		{"negative as int32", []byte{'d', 0xff, 0xff, 0xff, 0xff}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Len(tc.hdr); got != tc.want {
				t.Errorf("Len(%v) = %d, want %d", tc.hdr, got, tc.want)
			}
		})
	}
}

func TestNext(t *testing.T) {
	msg := []byte{'Q', 0, 0, 0, 6, 'x', 0, 'S'}
	for _, tc := range []struct {
		name     string
		b        []byte
		wantTyp  byte
		wantBody []byte
		wantN    int
	}{
		{"short header", msg[:4], 0, nil, 0},
		{"short body", msg[:6], 0, nil, 0},
		{"whole, more after", msg, 'Q', []byte{'x', 0}, 7},
		{"corrupt", []byte{'Q', 0, 0, 0, 2}, 0, nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, body, n := Next(tc.b)
			if typ != tc.wantTyp || !bytes.Equal(body, tc.wantBody) || n != tc.wantN {
				t.Errorf("Next = %q, %q, %d; want %q, %q, %d", typ, body, n, tc.wantTyp, tc.wantBody, tc.wantN)
			}
		})
	}
}

func TestReadHeader(t *testing.T) {
	var hdr [HeaderLen]byte
	t.Run("ok", func(t *testing.T) {
		n, err := ReadHeader(bytes.NewReader([]byte{'p', 0, 0, 0, 9, 'a'}), hdr[:], 5)
		if n != 5 || err != nil || hdr[0] != 'p' {
			t.Errorf("ReadHeader = %d, %v (type %q); want 5, nil ('p')", n, err, hdr[0])
		}
	})
	t.Run("over max", func(t *testing.T) {
		_, err := ReadHeader(bytes.NewReader([]byte{'p', 0, 0, 0, 10}), hdr[:], 5)
		var le *LengthError
		if !errors.As(err, &le) || le.Length != 10 || le.Type != 'p' {
			t.Fatalf("ReadHeader error = %v, want a LengthError for 10", err)
		}
		if want := "invalid message length 10 for message type 112"; err.Error() != want {
			t.Errorf("error text %q, want %q", err, want)
		}
	})
	t.Run("eof", func(t *testing.T) {
		if _, err := ReadHeader(bytes.NewReader(nil), hdr[:], 5); err != io.EOF {
			t.Errorf("ReadHeader on nothing = %v, want io.EOF", err)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		if _, err := ReadHeader(bytes.NewReader([]byte{'p', 0}), hdr[:], 5); err != io.ErrUnexpectedEOF {
			t.Errorf("ReadHeader on a partial header = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

func TestLenAllocatesNothing(t *testing.T) {
	b := []byte{'D', 0, 0, 0, 8, 1, 2, 3, 4}
	if n := testing.AllocsPerRun(100, func() { _, _, _ = Next(b) }); n != 0 {
		t.Errorf("Next allocates %v times, want 0", n)
	}
}
