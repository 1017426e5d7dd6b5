package wire

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/reasons"
	"github.com/querycop/querycop/pool"
)

// Session mode: the session's first request takes a backend from the pool,
// which then serves only this client until it leaves (relay.go relays it).

// attach takes a backend for the session and relays until it ends.
func (ss *session) attach(pl Pool, settings []startupSetting, first []byte) reasons.Reason {
	for {
		reason, cancelled := ss.attachOnce(pl, settings, first)
		if !cancelled {
			return reason
		}
		// The request was cancelled before it reached a backend, and
		// answered so; the session goes on without one.
		rest, reason := ss.skipCancelled(first)
		if reason != "" {
			return reason
		}
		if len(rest) == 0 {
			var err error
			if rest, err = ss.awaitFirst(make([]byte, 64)); len(rest) == 0 {
				return ss.firstReadFailed(err)
			}
		}
		first = rest
	}
}

// attachOnce takes a backend for the request in first and relays until
// the session ends; cancelled reports a CancelRequest that came before the
// request reached the backend (nothing was sent).
func (ss *session) attachOnce(pl Pool, settings []startupSetting, first []byte) (reason reasons.Reason, cancelled bool) {
	ctx := ss.waitForBackend()
	lease, err := pl.Acquire(ctx)
	if ss.leftWhileWaiting(lease) {
		return reasons.ClientGone, false
	}
	if err != nil {
		if ss.backendReady(nil) {
			return "", true
		}
		if ss.cutByShutdown() {
			return reasons.Shutdown, false
		}
		ss.refuse(err)
		return reasonOf(err), false
	}
	back := lease.Conn()
	ss.logf.backendPID.Store(back.PID())
	if q := setQuery(settings); q != "" {
		ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
		_, err := back.Exec(ctx, q)
		cancel()
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				// As PostgreSQL would have refused the start-up packet.
				resp := fromPgError(pgErr)
				resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
				ss.backendReady(nil)
				ss.send(resp)
				lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I'})
				return reasons.BadStartup, false
			}
			ss.backendReady(nil)
			lease.Release(pool.ReleaseState{Broken: true})
			ss.send(fatal(codeConnectionFailure, "backend connection failed while applying start-up parameters"))
			return reasons.BackendGone, false
		}
	}
	if ss.backendReady(lease) {
		// Cancelled while the backend was being made ready: the request
		// was never sent, and the backend goes back as it is.
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I'})
		return "", true
	}
	ss.log.Info().Bool("tls", ss.tls).Bool("backend_tls", back.TLS()).Msg("client attached")
	reason, state := ss.relay(back.NetConn(), first)
	ss.lease.Store(nil)
	if !ss.lease.awaitCancels() {
		state = pool.ReleaseState{Broken: true}
	}
	lease.Release(state)
	return reason, false
}
