package wire

import (
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Shutdown in three steps, so that it always ends and never cuts a request
// whose answer (a COMMIT's above all) the client would then not know:
//
//  1. Until GATEKEEPER_SHUTDOWN_TIMEOUT, sessions run on.
//  2. Then each session is closed with 57P01 as soon as it is between
//     requests: at once if it is already (session mode: every request
//     answered; transaction mode: no backend attached, or a pinned client
//     between transactions), else right after the
//     answer it waits for has been relayed in full. A request the client sends
//     after that point is not forwarded. This step lasts at most
//     ShutdownAnswerWait.
//  3. Sessions still running then are closed whatever they are doing. A write
//     to the client made on behalf of shutdown has a deadline of
//     shutdownWriteWait, and a write the relay has in progress (to a client
//     that does not read) is given the same deadline.
//
// No lock is held across a write to a client; the server's session map is
// only copied under its lock.

// ShutdownAnswerWait bounds step 2: how long, after the shutdown timeout,
// a request in flight may take to be answered before its session is closed
// anyway.
const ShutdownAnswerWait = 3 * time.Second

// shutdownWriteWait bounds a write to a client made on behalf of shutdown.
const shutdownWriteWait = time.Second

// shutdownExitWait bounds the wait for sessions to end once step 3 has
// unblocked every socket (they end at once unless something is wrong).
const shutdownExitWait = 2 * time.Second

// ShutdownBound is the most Shutdown takes beyond its context's deadline.
const ShutdownBound = ShutdownAnswerWait + shutdownWriteWait + shutdownExitWait

// snapshot copies the live sessions, so nothing is done to them under s.mu.
func (s *Server) snapshot() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.live))
	for ss := range s.live {
		out = append(out, ss)
	}
	return out
}

// admitRequests is called by the session-mode client side for each chunk
// read from the client, before it is forwarded: n requests that expect a
// ReadyForQuery start, and midBatch says the last message needs more
// (extended protocol before its Sync). It reports false once shutdown has
// closed the session: the chunk must not be forwarded.
func (ss *session) admitRequests(n int64, midBatch bool) bool {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	if ss.gateClosed {
		return false
	}
	if n != 0 {
		ss.outstanding.Add(n)
	}
	ss.midBatch = midBatch
	return true
}

// beginTx is called by the transaction-mode client side before it attaches
// a backend; false once shutdown has closed the session.
func (ss *session) beginTx() bool {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	if ss.gateClosed {
		return false
	}
	ss.txBusy = true
	return true
}

// endTx is called in transaction mode once a transaction's last answer has
// been written to the client and its backend released; a session that
// shutdown is waiting for is closed there.
func (ss *session) endTx() {
	ss.gateMu.Lock()
	ss.txBusy = false
	ss.gateMu.Unlock()
	ss.closeIfDraining()
}

// answered is called by the session-mode backend side after it wrote
// answers that left no request outstanding.
func (ss *session) answered() {
	if ss.draining.Load() {
		ss.closeIfDraining()
	}
}

// betweenRequestsLocked reports whether the client waits for no answer.
func (ss *session) betweenRequestsLocked() bool {
	return ss.outstanding.Load() == 0 && !ss.midBatch && !ss.txBusy
}

// drain is step 2 for one session: close it now if it is between requests,
// else when it gets there.
func (ss *session) drain() {
	ss.gateMu.Lock()
	ss.draining.Store(true)
	ss.gateMu.Unlock()
	ss.closeIfDraining()
}

// closeIfDraining closes a draining session that is between requests.
func (ss *session) closeIfDraining() {
	ss.gateMu.Lock()
	now := ss.draining.Load() && !ss.gateClosed && ss.betweenRequestsLocked()
	if now {
		ss.gateClosed = true
	}
	ss.gateMu.Unlock()
	if now {
		ss.kill(shutdownError(), reasons.Shutdown)
	}
}

// forceClose is step 3 for one session.
func (ss *session) forceClose() {
	ss.gateMu.Lock()
	ss.gateClosed = true
	ss.gateMu.Unlock()
	ss.kill(shutdownError(), reasons.Shutdown)
}

// cutByShutdown reports whether a wait for a backend that just failed was
// cut short by shutdown, and then makes sure the client gets 57P01. Shutdown
// ends the waits (by ending the server's context) as it starts closing
// sessions, so the wait can fail before this session's kill has run; the
// failure must not reach the client as an error of its own.
func (ss *session) cutByShutdown() bool {
	if !ss.killed.Load() && ss.srv.ctx.Err() == nil {
		return false
	}
	ss.kill(shutdownError(), reasons.Shutdown) // once, whoever is first
	return true
}

func shutdownError() *pgproto3.ErrorResponse {
	return fatal(codeAdminShutdown, "querycop is shutting down")
}

// kill ends a session from outside (shutdown): the client gets resp, within
// shutdownWriteWait, and both sockets are unblocked.
//
// A second call waits for the first to finish: the session's own goroutine
// calls it (cutByShutdown) before closing the connection, which must not
// happen while the first is still writing resp.
func (ss *session) kill(resp *pgproto3.ErrorResponse, reason reasons.Reason) {
	ss.killMu.Lock()
	defer ss.killMu.Unlock()
	if !ss.killed.CompareAndSwap(false, true) {
		return
	}
	ss.log.Info().Str("reason", string(reason)).Msg("closing client")
	ss.gateMu.Lock()
	if ss.waitCancel != nil {
		ss.waitCancel() // a request waiting for a backend: it will not get one
	}
	ss.gateMu.Unlock()
	conn := *ss.connShared.Load()
	buf, _ := resp.Encode(nil)
	deadline := time.Now().Add(shutdownWriteWait)
	if !ss.writeMu.TryLock() {
		// The relay is writing to the client, perhaps one that does not
		// read: that write gets the same deadline, so the lock comes free.
		_ = conn.SetWriteDeadline(deadline)
		ss.writeMu.Lock()
	}
	_ = conn.SetWriteDeadline(deadline)
	_, _ = conn.Write(buf)
	ss.writeMu.Unlock()
	// Under idleMu, so armIdle cannot put a later read deadline back.
	ss.idleMu.Lock()
	_ = conn.SetReadDeadline(time.Now())
	ss.idleMu.Unlock()
	if lease := ss.lease.Load(); lease != nil {
		_ = lease.Conn().NetConn().SetReadDeadline(time.Now())
	}
}
