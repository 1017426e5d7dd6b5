package pool

import (
	"context"

	"github.com/querycop/querycop/backend"
)

// Dialer opens backend connections; *backend.Dialer satisfies it.
type Dialer interface {
	Dial(ctx context.Context, p backend.Params) (*backend.Conn, error)
}

// Lease is a backend connection handed to one session. Exactly one of
// Release or Destroy must be called when the session is done with it.
type Lease struct {
	conn    *backend.Conn
	release func(reusable bool)
}

// Conn is the leased connection.
func (l *Lease) Conn() *backend.Conn { return l.conn }

// Release gives the connection back. reusable is false when its protocol
// state is unknown (client vanished mid-query, relay error): it is then
// closed instead of reused.
func (l *Lease) Release(reusable bool) { l.release(reusable) }

// Direct opens a new backend connection for every lease and closes it on
// release: no pooling.
type Direct struct {
	Dialer Dialer
}

func (d *Direct) Acquire(ctx context.Context, p backend.Params) (*Lease, error) {
	c, err := d.Dialer.Dial(ctx, p)
	if err != nil {
		return nil, err
	}
	return &Lease{conn: c, release: func(bool) { c.Close() }}, nil
}
