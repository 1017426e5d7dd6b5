package wire

import (
	"errors"

	"github.com/querycop/querycop/internal/pgframe"
)

// framer walks the 5-byte headers (type, int32 length including itself) of
// a stream of protocol messages, without copying or allocating, so the relay
// can forward whole buffers and still know where messages start. The header
// itself is read by pgframe, as everywhere else.
type framer struct {
	hdr      [pgframe.HeaderLen]byte
	hdrLen   int // header bytes collected so far (a header may span reads)
	need     int // body bytes still to pass in the current message
	statusAt bool
	// txStatus is the status byte of the last ReadyForQuery seen
	// ('I' idle, 'T' in transaction, 'E' failed transaction).
	txStatus byte
	// last is the type of the last message started.
	last byte
	// answered counts messages that the server answers with exactly one
	// ReadyForQuery: Query, Sync and FunctionCall from a client, or
	// ReadyForQuery itself from a server.
	answered   int
	fromClient bool
	// messages counts every message started, for metrics.
	messages int64
	// maxLen, if set, bounds a message's length (client direction).
	maxLen int
}

var errBadFrame = errors.New("invalid message length in protocol stream")

// errTooLarge is a client message over GATEKEEPER_MAX_MESSAGE_SIZE.
var errTooLarge = errors.New("message from client exceeds GATEKEEPER_MAX_MESSAGE_SIZE")

// feed advances over p. If stop is non-zero and a message of that type
// starts in p, feed returns its offset and stops there; otherwise -1.
func (f *framer) feed(p []byte, stop byte) (int, error) {
	i := 0
	for i < len(p) {
		if f.need > 0 {
			if f.statusAt {
				f.txStatus = p[i]
				f.statusAt = false
			}
			n := min(f.need, len(p)-i)
			f.need -= n
			i += n
			continue
		}
		if f.hdrLen == 0 && stop != 0 && p[i] == stop {
			return i, nil
		}
		n := copy(f.hdr[f.hdrLen:], p[i:])
		f.hdrLen += n
		i += n
		if f.hdrLen < len(f.hdr) {
			break
		}
		f.hdrLen = 0
		size := pgframe.Len(f.hdr[:])
		if size < 0 {
			return -1, errBadFrame
		}
		if f.maxLen > 0 && size > f.maxLen {
			return -1, errTooLarge
		}
		f.need = size
		f.last = f.hdr[0]
		f.messages++
		if f.fromClient {
			if f.last == 'Q' || f.last == 'S' || f.last == 'F' {
				f.answered++
			}
		} else if f.last == 'Z' {
			f.answered++
			f.statusAt = f.need > 0
		}
	}
	return -1, nil
}

// atBoundary reports whether the stream so far ends exactly between messages.
func (f *framer) atBoundary() bool { return f.need == 0 && f.hdrLen == 0 }
