package pool

import (
	"context"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/puddle/v2"

	"github.com/querycop/querycop/backend"
)

// resetTimeout bounds the gateway's own statements on release.
const resetTimeout = 5 * time.Second

// Lease is a backend connection held by one session.
type Lease struct {
	res  *puddle.Resource[*conn]
	pool *Pool
	// conn is res's value, kept here because other goroutines (a cancel
	// request, shutdown) may look at a lease while its session releases
	// it, and puddle's Value must not be called once a resource is back.
	conn *conn
}

// Conn is the leased connection. It stays valid after Release (the
// connection may by then serve someone else).
func (l *Lease) Conn() *backend.Conn { return l.conn.Conn }

// ReleaseState is what the relay knows about the connection when the
// session let go of it.
type ReleaseState struct {
	// Clean: the relay stopped between messages in both directions, with
	// every request answered.
	Clean bool
	// Busy: the server was still working on a request of the client's.
	Busy bool
	// TxStatus is the last ReadyForQuery status ('I', 'T' or 'E').
	TxStatus byte
	// Broken: the connection failed or its protocol state is unknown.
	Broken bool
	// KeepState skips the reset query: transaction pooling hands the
	// connection from client to client between transactions and keeps
	// prepared statements on it.
	KeepState bool
	// ResetQuery, when set, replaces GATEKEEPER_POOL_RESET_QUERY for this
	// release: transaction mode needs DISCARD ALL after a pinned client,
	// whatever the operator chose for session mode.
	ResetQuery string
	// Discard closes the connection however clean it is: it holds state
	// no reset removes (a library loaded with LOAD).
	Discard bool
}

// Release returns the connection to the pool after making it fit for the
// next session: a transaction left open is rolled back, then the reset
// query runs (so temp tables, prepared statements, LISTEN, advisory locks
// and SETs never leak). A connection whose state is in doubt, that fails
// its reset or that is past its retirement is closed instead.
func (l *Lease) Release(st ReleaseState) {
	defer l.pool.lim.release()
	pl := l.pool
	c := l.conn
	switch {
	case st.Broken:
		if st.Busy {
			// Its state is unknown, but the server may still be working
			// for a client that is gone: stop that first.
			ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
			_ = c.Cancel(ctx)
			cancel()
		}
		pl.destroy(l.res, reasons.BackendGone)
		return
	case st.Discard && !st.Busy:
		pl.destroy(l.res, reasons.SessionState)
		return
	case st.Busy || !st.Clean:
		// The client left mid-request: stop the server's work so locks are
		// let go now rather than when the query ends, then close.
		if st.Busy {
			ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
			_ = c.Cancel(ctx)
			cancel()
		}
		pl.destroy(l.res, reasons.ClientGone)
		return
	}
	if !l.reset(st) {
		return
	}
	if c.retired(time.Now()) {
		pl.stats.retired.Add(1) // before the close the server sees
		pl.destroy(l.res, reasons.Lifetime)
		return
	}
	if pl.ps.isPaused() {
		// Paused so the database can restart: hold no idle connection.
		pl.destroy(l.res, reasons.Pause)
		return
	}
	if pl.shrunk.Load() && pl.total() > pl.size() {
		pl.destroy(l.res, reasons.Resize) // shrunk while leased
		return
	}
	l.res.Release()
}

// reset rolls back a transaction left open and runs the reset query; false
// when the connection was closed instead.
func (l *Lease) reset(st ReleaseState) bool {
	pl, c := l.pool, l.conn
	rollback := st.TxStatus == 'T' || st.TxStatus == 'E'
	q := pl.ps.cfg.ResetQuery
	switch {
	case st.ResetQuery != "":
		q = st.ResetQuery
	case st.KeepState:
		q = ""
	}
	if !rollback && q == "" {
		// Nothing to run, so no deadline to arm: in transaction mode this
		// is most releases, one per transaction.
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
	defer cancel()
	if rollback {
		if _, err := c.Exec(ctx, "ROLLBACK"); err != nil {
			pl.destroy(l.res, reasons.ResetFailed)
			return false
		}
		pl.stats.rollbacks.Add(1)
	}
	if q != "" {
		if tx, err := c.Exec(ctx, q); err != nil || tx != 'I' {
			pl.log.Warn().Uint32("backend_pid", c.PID()).AnErr("error", err).Msg("reset query failed; closing the connection (check GATEKEEPER_POOL_RESET_QUERY)")
			pl.destroy(l.res, reasons.ResetFailed)
			return false
		}
	}
	return true
}
