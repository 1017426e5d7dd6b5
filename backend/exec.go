package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgframe"
)

// maxControlMessage bounds what Exec accepts from the server for its own
// small queries (reset, SET); a bigger message means the connection is not
// in the state we think.
const maxControlMessage = 1 << 20

// Exec runs sql with the simple query protocol and reads every response up
// to ReadyForQuery, keeping ParameterStatus changes (a reset query resets
// reported parameters, and the server says so). It returns the server's
// first error as a *pgconn.PgError and the final transaction status.
// Only for the gateway's own statements, while no session is relaying.
func (c *Conn) Exec(ctx context.Context, sql string) (txStatus byte, err error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.netConn.SetDeadline(deadline)
		defer c.netConn.SetDeadline(time.Time{})
	}
	buf, err := (&pgproto3.Query{String: sql}).Encode(nil)
	if err != nil {
		return 0, err
	}
	if _, err := c.netConn.Write(buf); err != nil {
		return 0, fmt.Errorf("sending query: %w", err)
	}
	return c.readUntilReady(1)
}

func (c *Conn) readUntilReady(n int) (byte, error) {
	var firstErr error
	r := c.controlReader()
	for {
		typ, body, err := r.next()
		if err != nil {
			return 0, err
		}
		switch typ {
		case 'S':
			c.noteParameter(body)
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err == nil && firstErr == nil {
				firstErr = pgconn.ErrorResponseToPgError(&er)
			}
		case 'Z':
			n--
			if n == 0 {
				if len(body) != 1 {
					return 0, errors.New("invalid ReadyForQuery from server")
				}
				status := body[0]
				if err := r.finish(); err != nil {
					return 0, err
				}
				return status, firstErr
			}
		}
	}
}

func (c *Conn) noteParameter(body []byte) {
	var ps pgproto3.ParameterStatus
	if err := ps.Decode(body); err == nil {
		c.params[ps.Name] = ps.Value
	}
}

// controlBufSize holds a whole answer to the gateway's own statements (a
// reset, a SET, the auth query's row) in the common case.
const controlBufSize = 2048

// controlReader reads the server's answers to the gateway's own
// statements a socketful at a time, not a header and then a body (two
// reads per message, and an allocation), and hands out the messages in
// it. A body is valid until the next call.
type controlReader struct {
	c    *Conn
	data []byte // read and not yet handed out: a window of c.ctlBuf
}

func (c *Conn) controlReader() controlReader {
	if c.ctlBuf == nil {
		c.ctlBuf = make([]byte, controlBufSize)
	}
	return controlReader{c: c}
}

func (r *controlReader) next() (typ byte, body []byte, err error) {
	for {
		typ, body, n := pgframe.Next(r.data)
		switch {
		case n > 0:
			r.data = r.data[n:]
			return typ, body, nil
		case n < 0 || len(r.data) >= pgframe.HeaderLen && pgframe.Len(r.data) > maxControlMessage:
			return 0, nil, fmt.Errorf("invalid message length %d from server", binary.BigEndian.Uint32(r.data[1:pgframe.HeaderLen]))
		case len(r.data) >= pgframe.HeaderLen && pgframe.HeaderLen+pgframe.Len(r.data) > len(r.c.ctlBuf):
			// Bigger than the buffer (a long error message): a body of its own.
			body := make([]byte, pgframe.Len(r.data))
			typ, got := r.data[0], copy(body, r.data[pgframe.HeaderLen:])
			r.data = nil
			if _, err := io.ReadFull(r.c.netConn, body[got:]); err != nil {
				return 0, nil, fmt.Errorf("reading response: %w", err)
			}
			return typ, body, nil
		}
		if err := r.fill(); err != nil {
			return 0, nil, err
		}
	}
}

// fill reads what the socket holds behind the unread data.
func (r *controlReader) fill() error {
	kept := copy(r.c.ctlBuf, r.data)
	for {
		n, err := r.c.netConn.Read(r.c.ctlBuf[kept:])
		if n > 0 {
			r.data = r.c.ctlBuf[:kept+n]
			return nil
		}
		if err != nil {
			if err == io.EOF && kept > 0 {
				err = io.ErrUnexpectedEOF // as io.ReadFull: a message cut short
			}
			return fmt.Errorf("reading response: %w", err)
		}
	}
}

// finish is called after the answer's last ReadyForQuery. A read may have
// taken more: only what a server sends unasked can follow (a parameter
// change, a notice, a notification), so it is consumed here, the
// parameters kept and the rest dropped (no session owns the connection;
// the relay must start at a message boundary). Anything else means the
// connection is not in the state the gateway thinks.
func (r *controlReader) finish() error {
	for len(r.data) > 0 {
		typ, body, err := r.next()
		if err != nil {
			return err
		}
		switch typ {
		case 'S':
			r.c.noteParameter(body)
		case 'N', 'A':
		default:
			return fmt.Errorf("unexpected message type %q from server after ReadyForQuery", typ)
		}
	}
	return nil
}
