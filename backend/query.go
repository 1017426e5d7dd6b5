package backend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Query runs sql with text parameters through the extended protocol (so a
// parameter is never spliced into SQL) and returns up to maxRows rows of
// text values, nil standing for NULL; more rows are counted in total but
// not kept. The server's error comes back as a *pgconn.PgError with the
// connection still usable; any other error leaves it unusable. Only for the
// gateway's own queries (the auth query), on a connection no session uses.
func (c *Conn) Query(ctx context.Context, sql string, args []string, maxRows int) (rows [][]*string, total int, err error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = c.netConn.SetDeadline(deadline)
		defer c.netConn.SetDeadline(time.Time{})
	}
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	buf, err := (&pgproto3.Parse{Query: sql}).Encode(nil)
	if err == nil {
		buf, err = (&pgproto3.Bind{Parameters: params}).Encode(buf)
	}
	if err == nil {
		buf, err = (&pgproto3.Execute{}).Encode(buf)
	}
	if err == nil {
		buf, err = (&pgproto3.Sync{}).Encode(buf)
	}
	if err != nil {
		return nil, 0, err
	}
	if _, err := c.netConn.Write(buf); err != nil {
		return nil, 0, fmt.Errorf("sending query: %w", err)
	}
	var firstErr error
	r := c.controlReader()
	for {
		typ, body, err := r.next()
		if err != nil {
			return nil, 0, err
		}
		switch typ {
		case 'D':
			total++
			if len(rows) >= maxRows {
				continue
			}
			var dr pgproto3.DataRow
			if err := dr.Decode(body); err != nil {
				return nil, 0, fmt.Errorf("decoding a row: %w", err)
			}
			row := make([]*string, len(dr.Values))
			for i, v := range dr.Values {
				if v != nil {
					s := string(v)
					row[i] = &s
				}
			}
			rows = append(rows, row)
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err == nil && firstErr == nil {
				firstErr = pgconn.ErrorResponseToPgError(&er)
			}
		case 'S':
			c.noteParameter(body)
		case 'Z':
			if len(body) != 1 {
				return nil, 0, errors.New("invalid ReadyForQuery from server")
			}
			if body[0] != 'I' {
				// The query left a transaction open (it is the operator's
				// SQL); the connection is no longer in a known state.
				return nil, 0, errors.New("the query left a transaction open")
			}
			if err := r.finish(); err != nil {
				return nil, 0, err
			}
			if firstErr != nil {
				return nil, 0, firstErr
			}
			return rows, total, nil
		}
	}
}
