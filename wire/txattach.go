package wire

import (
	"context"
	"errors"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/reasons"
	"github.com/querycop/querycop/pool"
)

// Transaction mode, the ends of an attachment: taking a backend for a
// transaction and bringing its settings in line with the client's
// (attach), and giving it back when the transaction ends (endAttachment)
// or the client leaves (finish), reset first when another client must not
// see what this one left (sessionReset).

// attach takes a backend from the pool for the client's next transaction
// and brings its settings in line with the client's.
func (tx *txSession) attach() (*attachment, error) {
	ss := tx.ss
	if !ss.beginTx() {
		return nil, errShuttingDown
	}
	start := time.Now()
	lease, err := tx.pl.Acquire(ss.waitForBackend())
	if ss.leftWhileWaiting(lease) {
		return nil, errClientLeft
	}
	if err != nil {
		if ss.backendReady(nil) {
			return nil, errCancelled
		}
		return nil, err
	}
	ss.rc.waitNanos.Add(int64(time.Since(start)))
	conn := lease.Conn()
	state := stateOf(conn)
	if state.settingsFP != tx.fp || state.settings == nil {
		for i, q := range settingsDiff(state.settings, tx.settings) {
			ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
			_, err := conn.Exec(ctx, q)
			cancel()
			if err != nil {
				if i > 0 {
					// The first query took effect: what the backend holds
					// is no longer known.
					state.settings, state.settingsFP = nil, unknownSettings
				}
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) {
					lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
					return nil, &settingsError{pgErr}
				}
				lease.Release(pool.ReleaseState{Broken: true})
				return nil, err
			}
		}
		state.settings = cloneMap(tx.settings)
		state.settingsFP = tx.fp
	}
	if ss.backendReady(lease) {
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		return nil, errCancelled
	}
	att := &attachment{lease: lease, conn: conn.NetConn(), state: state, since: time.Now(),
		txStatus: 'I', lastSettled: true,
		rbuf: relayBufs.Get().(*[]byte), obuf: relayBufs.Get().(*[]byte)}
	att.hold = att.holdArr[:0]
	att.pending = att.pendingArr[:0]
	tx.mu.Lock()
	tx.att = att
	tx.mu.Unlock()
	ss.lease.Store(lease)
	ss.rc.transactions.Add(1)
	return att, nil
}

// endAttachment returns a detached backend to the pool: as it is, unless
// the server said something after the transaction's last answer, which
// leaves it in an unknown state.
func (tx *txSession) endAttachment(att *attachment, leftover bool) {
	if !tx.ss.lease.awaitCancels() {
		leftover = true // a cancel may still act on it: close it
	}
	if leftover {
		att.lease.Release(pool.ReleaseState{Broken: true})
	} else {
		tx.ss.rc.heldNanos.Add(int64(time.Since(att.since)))
		tx.mu.Lock()
		st := tx.sessionReset(att, pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		tx.mu.Unlock()
		att.lease.Release(st)
	}
	relayBufs.Put(att.rbuf)
	relayBufs.Put(att.obuf)
	tx.ss.endTx()
}

// errClientLeft is a request whose client closed its connection while it
// waited for a backend: nothing was sent.
var errClientLeft = errors.New("client left while waiting for a backend")

// settingsError is a client setting the server refused when it was applied
// on a borrowed backend.
type settingsError struct{ err *pgconn.PgError }

func (e *settingsError) Error() string { return e.err.Message }

// failAttach tells the client why it got no backend.
func (tx *txSession) failAttach(err error) reasons.Reason {
	var se *settingsError
	if errors.As(err, &se) {
		resp := fromPgError(se.err)
		resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
		tx.ss.send(resp)
		return reasons.BadStartup
	}
	var bw *backendWriteError
	if errors.As(err, &bw) {
		return reasons.BackendGone
	}
	if errors.Is(err, errClientLeft) {
		return reasons.ClientGone // nobody to tell
	}
	if errors.Is(err, errShuttingDown) || tx.ss.cutByShutdown() {
		return reasons.Shutdown // the client gets 57P01 from shutdown
	}
	tx.ss.refuse(err)
	return reasonOf(err)
}

// finish ends the attachment of a client that is leaving.
func (tx *txSession) finish(att *attachment, reason reasons.Reason) {
	tx.mu.Lock()
	pumping := att.pumping
	tx.mu.Unlock()
	err := att.endErr
	if pumping {
		_ = att.conn.SetReadDeadline(time.Now())
		err = <-att.done
	}
	_ = att.conn.SetReadDeadline(time.Time{})
	_ = att.conn.SetWriteDeadline(time.Time{})
	tx.ss.lease.Store(nil)
	if att.detached {
		return // released by the backend side
	}
	defer func() {
		relayBufs.Put(att.rbuf)
		relayBufs.Put(att.obuf)
	}()
	var cw *clientWriteError
	var ne net.Error
	backendFailed := err != nil && !errors.As(err, &cw) && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, io.EOF)
	tx.mu.Lock()
	st := pool.ReleaseState{
		TxStatus:  att.txStatus,
		Busy:      att.sent > att.answered,
		Clean:     att.sent == att.answered && att.lastSettled && reason != reasons.ProtocolViolation && reason != reasons.Shutdown,
		Broken:    backendFailed || errors.Is(err, io.EOF) || reason == reasons.BackendGone,
		KeepState: true,
	}
	st = tx.sessionReset(att, st)
	tx.mu.Unlock()
	tx.ss.rc.heldNanos.Add(int64(time.Since(att.since)))
	if !tx.ss.lease.awaitCancels() {
		st = pool.ReleaseState{Broken: true}
	}
	att.lease.Release(st)
}

// sessionReset adds to st what a backend needs before another client may
// have it: after a pinned client (or a notification meant for someone
// else), DISCARD ALL and a fresh record of its state; after LOAD, a new
// connection. Called with tx.mu held, or by the side that owns att.
func (tx *txSession) sessionReset(att *attachment, st pool.ReleaseState) pool.ReleaseState {
	if tx.pinned == "" && !att.tainted {
		return st
	}
	st.KeepState = false
	st.ResetQuery = "DISCARD ALL"
	st.Discard = tx.pinned == pinLoad
	att.lease.Conn().Attachment = nil
	return st
}
