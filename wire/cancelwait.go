package wire

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/reasons"
	"github.com/querycop/querycop/pool"
)

// Cancels that come before a request reaches a backend.
//
// A client's request may wait for a backend (a full pool, a paused one, a
// dial) and then for the backend to be made ready (its start-up settings
// applied). A CancelRequest in that time has no backend to go to; if it
// were dropped, the request would run once a backend came, seconds later,
// as if never cancelled. Instead it ends the wait at once, and the request
// is answered as PostgreSQL answers a cancelled one: ErrorResponse 57014
// "canceling statement due to user request" and, at the end of the batch,
// ReadyForQuery. Nothing reached the server. A cancel that comes once the
// request has been forwarded goes to the backend as usual.

// A cancel can overtake its own request: the client sends the request,
// then the CancelRequest on a new connection, and the gateway may handle
// the second before its session goroutine has read the first, or before
// it has started to wait for a backend. A cancel that finds a request on
// its way (bytes read and no backend yet, bytes still in the socket, or a
// session-mode client before its first request) is therefore
// kept for earlyCancelWindow, and ends the next wait for a backend. A
// cancel with nothing on its way is dropped, as PostgreSQL drops one for
// an idle backend: it may be a late cancel of a request that has finished.
const earlyCancelWindow = time.Second

// waitForBackend registers the session as waiting for a backend and
// returns the context of the wait, which a CancelRequest ends.
func (ss *session) waitForBackend() context.Context {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	// One context serves the session's waits until a cancel ends one: in
	// transaction mode there is a wait per transaction, and a new context
	// each time would cost its allocations and a lock on the server's.
	if ss.waitCtx == nil || ss.waitCtx.Err() != nil {
		if ss.checkLeftFn == nil {
			ss.checkLeftFn = ss.checkLeft
		}
		ctx, cancel := context.WithCancel(ss.srv.ctx)
		ss.waitCtx, ss.waitCtxCancel = pool.WithWaitCheck(ctx, ss.checkLeftFn), cancel
	}
	ss.waitCancel, ss.cancelReq = ss.waitCtxCancel, false
	if !ss.earlyCancel.IsZero() && time.Since(ss.earlyCancel) < earlyCancelWindow {
		ss.cancelReq = true
		ss.waitCancel()
	}
	ss.earlyCancel, ss.reqRead = time.Time{}, false
	return ss.waitCtx
}

// endWaits lets go of the context waits use, when the session ends.
func (ss *session) endWaits() {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	if ss.waitCtxCancel != nil {
		ss.waitCtxCancel()
	}
}

// requestRead notes that the client's next request has started to
// arrive while no backend is attached (awaitFirst read it).
func (ss *session) requestRead() {
	ss.gateMu.Lock()
	ss.reqRead = true
	ss.gateMu.Unlock()
}

// batchSkipped notes that the rest of a batch cancelled before it had a
// backend has been read and dropped. Reading it between transactions noted
// a request on its way, and none is: a cancel from now on, sent after the
// batch's ReadyForQuery, is late and must spare the next request, unless
// more (the next request) has already been read.
func (ss *session) batchSkipped(more bool) {
	ss.gateMu.Lock()
	ss.reqRead = more
	ss.gateMu.Unlock()
}

// backendReady ends the wait: the request is about to be forwarded on
// lease (nil: the wait failed). It reports whether a CancelRequest came
// first; if not, cancels go to lease's backend from now on.
func (ss *session) backendReady(lease Lease) (cancelled bool) {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	// The wait is over; its context stays for the next one unless a
	// cancel ended it.
	ss.waitCancel = nil
	cancelled, ss.cancelReq = ss.cancelReq, false
	if !cancelled && lease != nil {
		ss.lease.Store(lease)
	}
	if cancelled || lease != nil {
		// The session is past its first request: from now on a cancel
		// with nothing on its way is a late one and is dropped.
		ss.hadRequest = true
	}
	return cancelled
}

// cancelWaiting is a CancelRequest for this session: if its request is
// waiting for a backend, the wait ends and true is returned.
func (ss *session) cancelWaiting() bool {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	if ss.waitCancel == nil {
		if ss.lease.Load() != nil {
			return false
		}
		// No request has a backend. If one is on its way (read, or still
		// in the socket, or, in session mode, the session has not had its
		// first request yet), the cancel is for it.
		if ss.reqRead || unreadInput(ss.conn) || (ss.srv.cfg.PoolMode != TransactionMode && !ss.hadRequest) {
			ss.earlyCancel = time.Now()
			return true
		}
		return false
	}
	ss.cancelReq = true
	ss.waitCancel()
	return true
}

// A client that closes its connection while its request waits for a
// backend has nothing sent for it: the pool calls checkLeft every 100 ms
// of the wait and once more when it ends, so a request whose client gave
// up never runs later, on a backend someone else could have had.
// PgBouncer drops such a client from its queue too. A request that finds
// a backend at once is not checked, as a direct connection would have run
// it: a client may send a request and close without waiting for the
// answer.

// checkLeft is the pool's wait check: it ends the wait if the client has
// closed its connection. It runs on the session's goroutine, inside
// Acquire.
func (ss *session) checkLeft() {
	if !clientClosed(ss.conn) {
		return
	}
	ss.clientLeft.Store(true)
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	if ss.waitCancel != nil {
		ss.waitCancel()
	}
}

// leftWhileWaiting reports whether checkLeft found the client gone during
// the wait that returned lease (nil: the wait failed); lease then goes
// back untouched and the wait is over. On every transaction's path in
// transaction mode: one atomic load.
func (ss *session) leftWhileWaiting(lease Lease) bool {
	if !ss.clientLeft.Load() {
		return false
	}
	ss.backendReady(nil)
	if lease != nil {
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
	}
	return true
}

// loginWait is the context of a login's wait for a pool (the credential
// check, the start-up settings check): it ends when the client closes its
// connection meanwhile (a psql killed while it connects), so nothing is
// asked of the server for it. Used on the session's goroutine only.
type loginWait struct {
	ctx  context.Context
	end  context.CancelFunc
	left bool
}

func (ss *session) newLoginWait() *loginWait {
	w := &loginWait{}
	ctx, end := context.WithCancel(ss.srv.ctx)
	w.end = end
	w.ctx = pool.WithWaitCheck(ctx, func() {
		if w.left = clientClosed(ss.conn); w.left {
			end()
		}
	})
	return w
}

// errCancelled is a request whose wait for a backend a CancelRequest ended.
var errCancelled = errors.New("cancelled while waiting for a backend")

// endsBatch reports whether a client message of type typ ends a batch:
// the server answers it with ReadyForQuery.
func endsBatch(typ byte) bool { return typ == 'Q' || typ == 'F' || typ == 'S' }

// endsBatch is endsBatch, for the transaction-mode client side.
func (ss *session) endsBatch(typ byte) bool { return endsBatch(typ) }

// answerCancelled answers the message of type typ whose wait for a backend
// was cancelled: the 57014 error, and ReadyForQuery too if the message
// ends its batch. skipping reports that the rest of the batch, up to its
// Sync, must be dropped (then answerCancelledEnd answers the Sync).
func (ss *session) answerCancelled(typ byte) (skipping bool, err error) {
	b, _ := canceledError().Encode(nil)
	if endsBatch(typ) {
		b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	}
	err = ss.writeClient(b)
	ss.endTx() // between transactions again: attach marked it busy
	return !endsBatch(typ), err
}

// answerCancelledEnd answers the Sync that ends a cancelled batch.
func (ss *session) answerCancelledEnd() error {
	b, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
	return ss.writeClient(b)
}

func canceledError() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "57014",
		Message: "canceling statement due to user request"}
}

// writeClient writes buf to the client with a deadline, for answers the
// gateway makes itself while the session goes on.
func (ss *session) writeClient(buf []byte) error {
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	_ = ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := ss.conn.Write(buf)
	_ = ss.conn.SetWriteDeadline(time.Time{})
	return err
}

// skipCancelled answers the cancelled request that starts pending (bytes
// already read from the client): the error, then every message up to the
// end of its batch (a Query or FunctionCall, or the Sync of an
// extended-protocol batch) is read and dropped, and ReadyForQuery 'I'
// sent. It returns what the client sent after the batch, or the reason
// the session must end.
func (ss *session) skipCancelled(pending []byte) (rest []byte, reason reasons.Reason) {
	buf := append([]byte(nil), pending...)
	sentErr := false
	limit := ss.srv.cfg.MaxMessageSize
	for range 1 << 20 { // bounded; each round reads or consumes something
		for len(buf) >= 5 {
			typ := buf[0]
			size := pgframe.Len(buf)
			if size < 0 || (limit > 0 && size > limit) {
				ss.send(fatal(codeProtocolViolation, errBadFrame.Error()))
				return nil, reasons.ProtocolViolation
			}
			if typ == 'X' {
				return nil, reasons.ClientClose
			}
			if !sentErr {
				b, _ := canceledError().Encode(nil)
				if err := ss.writeClient(b); err != nil {
					return nil, reasons.ClientGone
				}
				sentErr = true
			}
			if total := pgframe.HeaderLen + size; len(buf) >= total {
				buf = buf[total:]
			} else {
				skip := int64(total - len(buf))
				buf = buf[:0]
				if n, err := io.CopyN(io.Discard, ss.conn, skip); n < skip {
					return nil, ss.readEnd(err)
				}
			}
			if typ == 'Q' || typ == 'F' || typ == 'S' {
				// Before the client can send a late cancel: what follows
				// the batch, already read, is the next request on its way.
				ss.batchSkipped(len(buf) > 0)
				b, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
				if err := ss.writeClient(b); err != nil {
					return nil, reasons.ClientGone
				}
				return buf, ""
			}
		}
		var more [512]byte
		n, err := ss.conn.Read(more[:])
		buf = append(buf, more[:n]...)
		if n == 0 && err != nil {
			return nil, ss.readEnd(err)
		}
	}
	return nil, reasons.ProtocolViolation
}

// readEnd names why a read from the client failed outside the relay.
func (ss *session) readEnd(err error) reasons.Reason {
	if ss.killed.Load() {
		return reasons.Shutdown
	}
	if err != nil && !errors.Is(err, io.EOF) {
		ss.log.Debug().Err(err).Msg("client read failed")
	}
	return reasons.ClientGone
}
