package backend

import (
	"context"
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
	var hdr [pgframe.HeaderLen]byte
	for {
		typ, body, err := c.readMessage(hdr[:])
		if err != nil {
			return 0, err
		}
		switch typ {
		case 'S':
			var ps pgproto3.ParameterStatus
			if err := ps.Decode(body); err == nil {
				c.params[ps.Name] = ps.Value
			}
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
				return body[0], firstErr
			}
		}
	}
}

// readMessage reads one whole message from the server, its header into
// hdr, for the gateway's own exchanges (Exec, Query): at most
// maxControlMessage bytes.
func (c *Conn) readMessage(hdr []byte) (typ byte, body []byte, err error) {
	size, err := pgframe.ReadHeader(c.netConn, hdr, maxControlMessage)
	var le *pgframe.LengthError
	if errors.As(err, &le) {
		return 0, nil, fmt.Errorf("invalid message length %d from server", le.Length)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("reading response: %w", err)
	}
	body = make([]byte, size)
	if _, err := io.ReadFull(c.netConn, body); err != nil {
		return 0, nil, fmt.Errorf("reading response: %w", err)
	}
	return hdr[0], body, nil
}
