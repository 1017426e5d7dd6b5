package wire

import (
	"errors"
	"net"
	"os"
	"time"

	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/reasons"
)

// Transaction mode, the backend side of an attachment: reading its answers
// (inline on the client's goroutine, or on a pump goroutine of its own) and
// acting on the replies the gateway tracks (consume, onReply). Taking and
// giving back the backend is in txattach.go.

// startPump gives the attachment's backend side a goroutine of its own,
// before the client side blocks reading the client: from then on the
// backend is relayed as it speaks (results of an unsynced Flush, COPY,
// notices and errors while the client is idle in a transaction).
func (tx *txSession) startPump() {
	tx.mu.Lock()
	att := tx.att
	start := att != nil && !att.pumping
	if start {
		att.pumping = true
		att.done = make(chan error, 1)
	}
	tx.mu.Unlock()
	if start {
		go func() { att.done <- tx.pumpBackend(att) }()
	}
}

// inlineWait bounds how long the client side waits for answers on its own
// goroutine before it hands the backend side to a goroutine and goes back
// to watching the client: a client that disconnects during a long query
// is noticed (and its query cancelled) at most this late.
const inlineWait = 10 * time.Millisecond

// answerInline sends out, the requests gathered for the attached backend,
// and waits on the client's goroutine for their answers when they all end
// in a Sync, Query or FunctionCall: the client is then waiting too, and a
// second goroutine would only add a hand-off per transaction. It stops
// when the transaction ends (the backend goes back to the pool), when
// everything is answered inside a transaction, when the server waits for
// COPY data, or after inlineWait; it returns the reason the session must
// end, or "".
func (tx *txSession) answerInline(out *[]byte) reasons.Reason {
	tx.mu.Lock()
	att := tx.att
	wait := att != nil && !att.pumping && att.lastSettled && att.sent > att.answered
	tx.mu.Unlock()
	var exchange writeThenReader
	if wait {
		exchange, _ = att.conn.(writeThenReader)
	}
	if len(*out) == 0 || exchange == nil {
		if err := tx.flush(out); err != nil {
			return reasonForWrite(err)
		}
		exchange = nil
	}
	if !wait {
		return ""
	}
	_ = att.conn.SetReadDeadline(time.Now().Add(inlineWait))
	for {
		var n int
		var rerr error
		if exchange != nil {
			// The first answer is read without an empty read before it.
			var werr error
			n, werr, rerr = exchange.WriteThenRead(*out, *att.rbuf)
			tx.ss.rc.bytesIn.Add(int64(len(*out)))
			*out, exchange = (*out)[:0], nil
			if werr != nil {
				_ = att.conn.SetReadDeadline(time.Time{})
				return reasonForWrite(&backendWriteError{werr})
			}
		} else {
			n, rerr = att.conn.Read(*att.rbuf)
		}
		detach, leftover, err := tx.consume(att, (*att.rbuf)[:n])
		if detach {
			_ = att.conn.SetReadDeadline(time.Time{})
			if err != nil {
				// The only error consume reports with detach; it set a write
				// deadline on the backend, which goes back to the pool.
				_ = att.conn.SetWriteDeadline(time.Time{})
				tx.endAttachment(att, leftover)
				return reasons.ClientGone
			}
			tx.endAttachment(att, leftover)
			return ""
		}
		if err == nil && rerr != nil {
			if ne, ok := rerr.(net.Error); ok && ne.Timeout() && !tx.ss.killed.Load() {
				break // slow: the backend side gets a goroutine
			}
			err = rerr
		}
		if err != nil {
			att.endErr = err
			var cw *clientWriteError
			switch {
			case tx.ss.killed.Load():
				return reasons.Shutdown
			case errors.As(err, &cw):
				return reasons.ClientGone
			default:
				return reasons.BackendGone
			}
		}
		tx.mu.Lock()
		more := att.sent > att.answered && !att.copyIn
		tx.mu.Unlock()
		if !more {
			break
		}
	}
	_ = att.conn.SetReadDeadline(time.Time{})
	return ""
}

// writeThenReader is a backend connection that can send a request and
// read its answer without an empty read in between (sockio.Conn).
type writeThenReader interface {
	WriteThenRead(req, resp []byte) (n int, werr, rerr error)
}

// canDetachLocked reports whether the backend can go back to the pool: the
// client is between transactions with every request answered, and is not
// pinned. Called with tx.mu held.
func (tx *txSession) canDetachLocked(att *attachment) bool {
	return !att.detached && tx.pinned == "" && att.sent == att.answered && att.lastSettled && att.txStatus == 'I'
}

// pumpBackend relays the backend to the client for the rest of one
// attachment, on a goroutine of its own, and ends it when the transaction
// is over.
func (tx *txSession) pumpBackend(att *attachment) (err error) {
	defer func() {
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return // the transaction ended, or the client side stopped us
		}
		// Ended on its own: the client side may be blocked reading a
		// client that waits for the server (libpq does after a FATAL),
		// and nothing else would wake it.
		var cw *clientWriteError
		if !errors.As(err, &cw) {
			tx.backendLost.Store(true)
		}
		tx.ss.endClientReads()
	}()
	for {
		n, rerr := att.conn.Read(*att.rbuf)
		detach, leftover, err := tx.consume(att, (*att.rbuf)[:n])
		if detach {
			if err != nil {
				_ = att.conn.SetWriteDeadline(time.Time{}) // set by consume when the client went
			}
			tx.endAttachment(att, leftover)
			return err
		}
		if err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
	}
}

// consume forwards p, just read from the backend, to the client, acting on
// the replies the gateway tracks. It reports whether the attachment ended
// with it (then the caller releases the backend, even when err says the
// client could not be written to), and whether the server sent anything
// after that end.
func (tx *txSession) consume(att *attachment, p []byte) (detach, leftover bool, err error) {
	ss := tx.ss
	out := (*att.obuf)[:0]
	for len(p) > 0 && !detach {
		if att.need > 0 {
			k := min(att.need, len(p))
			out = append(out, p[:k]...)
			att.need -= k
			p = p[k:]
			continue
		}
		if att.skip > 0 {
			k := min(att.skip, len(p))
			att.skip -= k
			p = p[k:]
			continue
		}
		// Assemble a header (and, for the few messages acted on, the
		// whole message).
		if len(att.hold) < 5 {
			k := min(5-len(att.hold), len(p))
			att.hold = append(att.hold, p[:k]...)
			p = p[k:]
			if len(att.hold) < 5 {
				break
			}
		}
		typ := att.hold[0]
		size := pgframe.Len(att.hold)
		if size < 0 {
			return false, false, errBadFrame
		}
		length := size + 4
		if typ == 'A' && tx.dropsNotifications() {
			// A notification for a channel this client never listened on:
			// another client's LISTEN the gateway could not see (inside a
			// function or DO block). It is not this client's to see.
			att.hold = att.holdArr[:0]
			att.skip = length - 4
			att.tainted = true
			continue
		}
		if typ == '1' || typ == '3' || typ == 'Z' || (typ == 'S' && length < 1<<16) || (typ == 'E' && length < 1<<16 && tx.rewritesErrors(att)) {
			whole := 1 + length
			if (typ != 'E' && typ != 'S' && whole > 6) || whole < len(att.hold) {
				return false, false, errBadFrame
			}
			k := min(whole-len(att.hold), len(p))
			att.hold = append(att.hold, p[:k]...)
			p = p[k:]
			if len(att.hold) < whole {
				break
			}
			msg := att.hold
			att.hold = att.holdArr[:0]
			if typ == 'E' {
				out = append(out, tx.rewriteError(att, msg)...)
				ss.rc.msgsOut.Add(1)
				continue
			}
			if typ == 'S' {
				tx.onParameterStatus(att, msg[5:])
				out = append(out, msg...)
				ss.rc.msgsOut.Add(1)
				continue
			}
			keep, end := tx.onReply(att, typ, msg[5:])
			if typ == 'Z' {
				out = append(out, tx.takeReports(att)...)
			}
			if keep {
				out = append(out, msg...)
			}
			ss.rc.msgsOut.Add(1)
			detach = end
			continue
		}
		if typ != 'Z' && typ != 'S' && tx.inInjectedBatch(att) {
			// An answer to the gateway's own query: not the client's.
			att.hold = att.holdArr[:0]
			att.skip = length - 4
			continue
		}
		// Streamed message: forward the header, then the body as it comes.
		out = append(out, att.hold[:5]...)
		att.hold = att.holdArr[:0]
		att.need = length - 4
		switch typ {
		case 'E':
			tx.mu.Lock()
			att.errInBatch = true
			tx.mu.Unlock()
		case 'G', 'W':
			tx.mu.Lock()
			att.copyIn = true
			tx.mu.Unlock()
		}
		ss.rc.msgsOut.Add(1)
	}
	if len(out) > 0 {
		ss.writeMu.Lock()
		_, werr := ss.conn.Write(out)
		ss.writeMu.Unlock()
		ss.rc.bytesOut.Add(int64(len(out)))
		if werr != nil {
			// The client is gone: unblock the client side, which may be
			// reading it or writing to this backend (stalled because
			// its results were no longer relayed).
			ss.endClientReads()
			_ = att.conn.SetWriteDeadline(time.Now())
			// If the transaction's last answer is in out, the backend is
			// already detached and only the caller can release it.
			return detach, len(p) > 0, &clientWriteError{werr}
		}
	}
	if tx.takePinnedIdle(att) {
		// A pinned client between transactions, its last answer written:
		// shutdown may close it here, as it closes others at detach.
		ss.endTx()
	}
	return detach, len(p) > 0, nil
}

// takePinnedIdle reports, once per idle spell, that a pinned client's
// attachment has reached the point where an unpinned one would have been
// detached.
func (tx *txSession) takePinnedIdle(att *attachment) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if !att.pinnedIdle {
		return false
	}
	att.pinnedIdle, att.txIdle = false, true
	return true
}

// takeReports hands over the ParameterStatus messages the client must get
// before a ReadyForQuery (txsettings.go: reportStartupLocked).
func (tx *txSession) takeReports(att *attachment) []byte {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	r := att.reports
	att.reports = nil
	return r
}

// onReply updates the attachment for a ParseComplete, CloseComplete or
// ReadyForQuery, and says whether the client gets it and whether the
// attachment ends with it.
func (tx *txSession) onReply(att *attachment, typ byte, body []byte) (keep, end bool) {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	switch typ {
	case '1', '3':
		want := byte('P')
		if typ == '3' {
			want = 'C'
		}
		for i, pr := range att.pending {
			if pr.typ == want {
				if i == 0 {
					// The usual case (replies come in order): O(1), so a
					// long pipeline without a Sync costs linear time.
					att.pending = att.pending[1:]
				} else {
					att.pending = append(att.pending[:i], att.pending[i+1:]...)
				}
				return !pr.injected, false
			}
		}
		return true, false
	}
	// ReadyForQuery ends a batch: whatever it did not answer was skipped by
	// the server after an error, so statements parsed there do not exist.
	batch := att.answered
	att.answered++
	if len(att.injectedBatches) > 0 && att.injectedBatches[0] == batch {
		// The end of the gateway's own query: the client asked nothing.
		// The backend holds the client's start-up values now (or, had the
		// query failed, not): the next client gets RESET ALL and all of
		// its own settings.
		att.injectedBatches = att.injectedBatches[1:]
		att.state.settings, att.state.settingsFP = nil, unknownSettings
		if len(body) == 1 {
			att.txStatus = body[0]
		}
		return false, tx.detachIfDoneLocked(att)
	}
	if tx.ss.outstanding.Add(-1) == 0 {
		defer tx.ss.armIdle()
	}
	prev := att.txStatus
	if len(body) == 1 {
		att.txStatus = body[0]
		tx.ss.txStatus.Store(uint32(body[0]))
	}
	kept := att.pending[:0]
	for _, pr := range att.pending {
		if pr.seq > batch {
			kept = append(kept, pr)
			continue
		}
		switch {
		case pr.typ == 'P' && pr.unnamed != nil:
			if pr.injected {
				att.unnamedHere = false // try again before the next use
			} else if tx.unnamed == pr.unnamed {
				tx.unnamed = nil
			}
		case pr.typ == 'P':
			if pr.name != "" {
				if el, ok := att.state.prepared[pr.name]; ok {
					att.state.lru.Remove(el)
					delete(att.state.prepared, pr.name)
				}
			}
			// As on a direct connection, a statement whose Parse failed or
			// was skipped does not exist for the client.
			if pr.client != "" && tx.stmts[pr.client] == pr.stmt {
				delete(tx.stmts, pr.client)
			}
		case pr.typ == 'C' && pr.injected && pr.name != "":
			// An eviction the server skipped: the statement is still there.
			if _, ok := att.state.prepared[pr.name]; !ok {
				att.state.prepared[pr.name] = att.state.lru.PushBack(pr.name)
			}
		}
	}
	att.pending = kept
	tx.settleSetsLocked(att, batch, prev)
	att.errInBatch = false
	clear(att.dupNames)
	return true, tx.detachIfDoneLocked(att)
}

// detachIfDoneLocked ends the attachment when the client is between
// transactions with everything answered (a pinned client is noted as idle
// instead), and reports whether it ended.
func (tx *txSession) detachIfDoneLocked(att *attachment) bool {
	if tx.pinned != "" && !att.txIdle && att.sent == att.answered && att.lastSettled && att.txStatus == 'I' {
		att.pinnedIdle = true
	}
	if tx.canDetachLocked(att) {
		att.detached = true
		tx.att = nil
		tx.ss.lease.Store(nil)
		return true
	}
	return false
}

// inInjectedBatch reports whether the backend is answering a query the
// gateway sent itself.
func (tx *txSession) inInjectedBatch(att *attachment) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return len(att.injectedBatches) > 0 && att.injectedBatches[0] == att.answered
}

// dropsNotifications reports whether a NotificationResponse must not reach
// this client: only one that ran LISTEN (and so is pinned) can have
// listened. A client pinned for another reason may be on a backend where
// an earlier client's LISTEN, hidden in a function, still stands.
func (tx *txSession) dropsNotifications() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return !tx.listened
}

// onParameterStatus pins the client when the server reports a setting
// change the gateway neither made nor tracks: a function or DO block
// changed the session, and only this backend holds that change.
func (tx *txSession) onParameterStatus(att *attachment, body []byte) {
	raw, _ := cBytes(body)
	name := lowerASCII(string(raw))
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.pinned != "" || (len(att.injectedBatches) > 0 && att.injectedBatches[0] == att.answered) {
		return // pinned already, or the report of the gateway's own query
	}
	switch name {
	case "in_hot_standby":
		return // the server's state, not the session's
	case "client_encoding":
		if value, ok := cBytes(body[len(raw)+1:]); ok && unsafeClientEncoding(string(value)) {
			// The lexer cannot read this encoding's text (below).
			tx.pinLocked(pinSet)
			return
		}
	}
	// Expected: the report of a tracked SET or RESET in flight, or of one
	// a transaction block's end keeps or undoes.
	for _, sets := range [2][]*setCommand{att.pendingSets, att.txSets} {
		for _, set := range sets {
			if set.name == name || set.resetAll || set.discardAll {
				return
			}
		}
	}
	tx.pinLocked(pinReportedSetting)
}
