// Package pgframe reads the 5-byte header every PostgreSQL protocol message
// after start-up begins with: a type byte and an int32 length that counts
// itself but not the type (protocol.sgml, "Message Formats"). It is the
// one parser of that header for both sides of the gateway: the relays in
// wire walk it on buffers they forward whole, and the start-up and control
// exchanges in wire and backend read messages whole with it. It also names
// the codes of the untyped packets before start-up (SSLRequest,
// GSSENCRequest, CancelRequest), which wire answers and backend sends.
//
// It owns no state, starts no goroutines and takes no locks. Len and Next
// allocate nothing, so the relays stay allocation-free per message.
package pgframe

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Request codes of the untyped packets a connection may start with, from
// PostgreSQL's src/include/libpq/pqcomm.h: the int32 after the length of an
// SSLRequest, GSSENCRequest or CancelRequest, where a StartupMessage has
// its protocol version.
const (
	SSLRequestCode    = 80877103 // NEGOTIATE_SSL_CODE
	GSSENCRequestCode = 80877104 // NEGOTIATE_GSS_CODE
	CancelRequestCode = 80877102 // CANCEL_REQUEST_CODE
)

// HeaderLen is the size of a message header: the type byte and the length.
const HeaderLen = 5

// MaxLen bounds the length field of one message. PostgreSQL's own bound is
// PQ_LARGE_MESSAGE_LIMIT, about 1 GiB (src/include/libpq/libpq.h); a
// length claiming more is a corrupt stream, not a large message.
const MaxLen = 0x3fffffff

// Len returns the body length announced by the header at the start of hdr,
// which must hold at least HeaderLen bytes, or -1 when the length field is
// below 4 (it counts itself) or above MaxLen.
func Len(hdr []byte) int {
	n := binary.BigEndian.Uint32(hdr[1:HeaderLen])
	if n < 4 || n > MaxLen {
		return -1
	}
	return int(n) - 4
}

// Next returns the first complete message in b and its size: n is 0 when
// b holds no complete message yet, -1 when the length field is invalid.
func Next(b []byte) (typ byte, body []byte, n int) {
	if len(b) < HeaderLen {
		return 0, nil, 0
	}
	size := Len(b)
	if size < 0 {
		return 0, nil, -1
	}
	total := HeaderLen + size
	if len(b) < total {
		return 0, nil, 0
	}
	return b[0], b[HeaderLen:total], total
}

// LengthError is a header whose length field is invalid or announces a
// body over the reader's bound.
type LengthError struct {
	Type   byte
	Length uint32 // the length field as sent
}

func (e *LengthError) Error() string {
	return fmt.Sprintf("invalid message length %d for message type %d", e.Length, e.Type)
}

// ReadHeader reads one header from r into hdr (HeaderLen bytes) and
// returns the body length it announces, at most max. Read errors are
// returned as they are (io.EOF when r ended before the header); a bad
// length is a *LengthError.
func ReadHeader(r io.Reader, hdr []byte, max int) (int, error) {
	if _, err := io.ReadFull(r, hdr[:HeaderLen]); err != nil {
		return 0, err
	}
	size := Len(hdr)
	if size < 0 || size > max {
		return 0, &LengthError{Type: hdr[0], Length: binary.BigEndian.Uint32(hdr[1:HeaderLen])}
	}
	return size, nil
}
