package wire

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/querycop/querycop/internal/reasons"
	"github.com/querycop/querycop/pool"
)

// errTerminate is the client's Terminate message: a clean end.
var errTerminate = errors.New("client sent Terminate")

// errShuttingDown is a request that arrived after shutdown closed the
// session; it was not forwarded.
var errShuttingDown = errors.New("querycop is shutting down")

// relayBufSize is the read size of the relay in each direction.
const relayBufSize = 32 * 1024

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay copies messages both ways until one side ends, starting with
// pending, bytes already read from the client. The client side runs on the
// calling goroutine, the backend side on one more; whichever ends first
// unblocks the other with a read deadline rather than closing the backend,
// so that a clean backend can be reset and reused. The returned state tells
// the pool how the backend was left.
func (ss *session) relay(back net.Conn, pending []byte) (reasons.Reason, pool.ReleaseState) {
	fromClient := framer{fromClient: true, maxLen: ss.srv.cfg.MaxMessageSize}
	fromBack := framer{txStatus: 'I'}
	var ending atomic.Bool
	backDone := make(chan error, 1)
	go func() {
		err := ss.pumpBackend(back, &fromBack)
		if ending.CompareAndSwap(false, true) {
			// The client side may be blocked reading the client, or writing
			// to a backend that stopped reading because we stopped relaying
			// its results (a client that vanished without reading them).
			ss.endClientReads()
			_ = back.SetWriteDeadline(time.Now())
		}
		backDone <- err
	}()

	clientErr := ss.pumpClient(back, &fromClient, pending)
	backendFirst := !ending.CompareAndSwap(false, true)
	if !backendFirst {
		_ = back.SetReadDeadline(time.Now())
	}
	backErr := <-backDone
	_ = back.SetReadDeadline(time.Time{})
	_ = back.SetWriteDeadline(time.Time{})

	state := pool.ReleaseState{
		TxStatus: fromBack.txStatus,
		Busy:     fromClient.answered > fromBack.answered,
		Clean: fromClient.atBoundary() && fromBack.atBoundary() &&
			fromClient.answered == fromBack.answered && settled(fromClient.last),
	}
	var cw *clientWriteError
	var bw *backendWriteError
	switch {
	case ss.killed.Load(), errors.Is(clientErr, errShuttingDown):
		state.Clean = false
		return reasons.Shutdown, state
	case backendFirst && errors.As(backErr, &cw):
		return reasons.ClientGone, state
	case backendFirst, errors.As(clientErr, &bw):
		return reasons.BackendGone, pool.ReleaseState{Broken: true}
	case errors.Is(clientErr, errTerminate):
		return reasons.ClientClose, state
	case errors.Is(clientErr, errBadFrame), errors.Is(clientErr, errTooLarge):
		state.Clean = false
		if fromBack.atBoundary() {
			ss.send(fatal(codeProtocolViolation, clientErr.Error()))
		}
		return reasons.ProtocolViolation, state
	case errors.As(clientErr, new(*idleTimeoutError)):
		idle := clientErr.(*idleTimeoutError)
		if fromBack.atBoundary() {
			ss.send(fatal(idle.code, idle.msg))
		}
		return idle.reason, state
	default:
		return reasons.ClientGone, state
	}
}

// settled reports whether a client whose last message was typ left the
// server with nothing half-done: after Query, Sync or FunctionCall (or the
// end of a simple-protocol COPY) every message is followed by its answer.
// Extended-protocol messages without a Sync leave the state in doubt.
func settled(typ byte) bool {
	switch typ {
	case 0, 'Q', 'S', 'F', 'c', 'f':
		return true
	}
	return false
}

type backendWriteError struct{ err error }

func (e *backendWriteError) Error() string { return "writing to backend: " + e.err.Error() }

type clientWriteError struct{ err error }

func (e *clientWriteError) Error() string { return "writing to client: " + e.err.Error() }

// pumpClient forwards client messages to the backend, stopping before a
// Terminate, which is the gateway's to act on.
func (ss *session) pumpClient(back net.Conn, f *framer, pending []byte) error {
	bufp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bufp)
	buf := *bufp
	var counted int64
	for {
		var n int
		var err error
		if len(pending) > 0 {
			n = copy(buf, pending)
			pending = nil
		} else {
			ss.armIdle()
			n, err = ss.conn.Read(buf)
			if n == 0 && err != nil && ss.idleExpired() {
				return ss.idleTimeoutError()
			}
		}
		if n > 0 {
			before := f.answered
			stop, ferr := f.feed(buf[:n], 'X')
			end := n
			if stop >= 0 {
				end = stop
			}
			if ferr != nil {
				return ferr
			}
			if !ss.admitRequests(int64(f.answered-before), !settled(f.last)) {
				return errShuttingDown
			}
			if end > 0 {
				if _, werr := back.Write(buf[:end]); werr != nil {
					return &backendWriteError{werr}
				}
				ss.rc.bytesIn.Add(int64(end))
				ss.rc.msgsIn.Add(f.messages - counted)
				counted = f.messages
			}
			if stop >= 0 {
				return errTerminate
			}
		}
		if err != nil {
			return err
		}
	}
}

// pumpBackend forwards backend messages to the client, tracking message
// boundaries and the transaction status.
func (ss *session) pumpBackend(back net.Conn, f *framer) error {
	bufp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bufp)
	buf := *bufp
	var counted int64
	for {
		n, err := back.Read(buf)
		if n > 0 {
			before := f.answered
			if _, ferr := f.feed(buf[:n], 0); ferr != nil {
				return ferr
			}
			ss.txStatus.Store(uint32(f.txStatus))
			ss.writeMu.Lock()
			_, werr := ss.conn.Write(buf[:n])
			ss.writeMu.Unlock()
			if werr != nil {
				return &clientWriteError{werr}
			}
			// Counted once written, so shutdown never closes the client
			// between an answer's arrival and its relaying.
			if f.answered > before && ss.outstanding.Add(int64(before-f.answered)) == 0 {
				ss.armIdle() // everything answered: the client's idle time starts
				ss.answered()
			}
			ss.rc.bytesOut.Add(int64(n))
			ss.rc.msgsOut.Add(f.messages - counted)
			counted = f.messages
		}
		if err != nil {
			return err
		}
	}
}

// idleTimeoutError is a client closed by GATEKEEPER_CLIENT_IDLE_TIMEOUT or
// GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT.
type idleTimeoutError struct {
	code, msg string
	reason    reasons.Reason
}

func (e *idleTimeoutError) Error() string { return e.msg }

// endClientReads wakes the client side out of a read of the client, for
// the rest of the session: armIdle puts no later deadline back.
func (ss *session) endClientReads() {
	ss.idleMu.Lock()
	defer ss.idleMu.Unlock()
	ss.readsEnded = true
	_ = ss.conn.SetReadDeadline(time.Now())
}

// armIdle starts the client's idle clock: its read deadline is set for the
// idle timeout that applies (inside a transaction or not), but only while
// every request it sent is answered; a query that runs long is not the
// client being idle. Called before each client read and by the backend
// side when the last answer arrives.
func (ss *session) armIdle() {
	cfg := ss.srv.cfg
	if cfg.ClientIdleTimeout <= 0 && cfg.IdleInTransactionTimeout <= 0 {
		return
	}
	// Both sides call this: the client side before a read, the backend side
	// on the last answer. Without the lock, the client side could read
	// "a request is outstanding", the backend side arm the clock, and the
	// client side then clear it, leaving an idle client with no deadline.
	ss.idleMu.Lock()
	defer ss.idleMu.Unlock()
	if ss.killed.Load() || ss.readsEnded {
		return // kill or endClientReads set a read deadline that must stay
	}
	timeout := cfg.ClientIdleTimeout
	if tx := byte(ss.txStatus.Load()); tx == 'T' || tx == 'E' {
		timeout = cfg.IdleInTransactionTimeout
	}
	if timeout <= 0 || ss.outstanding.Load() > 0 {
		ss.idleUntil.Store(0)
		_ = ss.conn.SetReadDeadline(time.Time{})
		return
	}
	until := time.Now().Add(timeout)
	ss.idleUntil.Store(until.UnixNano())
	_ = ss.conn.SetReadDeadline(until)
}

// idleExpired reports whether a client read ended because the idle clock
// ran out (and not because the session is being closed).
func (ss *session) idleExpired() bool {
	until := ss.idleUntil.Load()
	return until != 0 && time.Now().UnixNano() >= until && !ss.killed.Load()
}

// idleTimeoutError says which idle timeout ended the session.
func (ss *session) idleTimeoutError() *idleTimeoutError {
	if tx := byte(ss.txStatus.Load()); tx == 'T' || tx == 'E' {
		return &idleTimeoutError{code: "25P03", reason: reasons.IdleInTransactionTimeout,
			msg: "terminating connection due to idle-in-transaction timeout (GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT)"}
	}
	return &idleTimeoutError{code: "57P05", reason: reasons.ClientIdleTimeout,
		msg: "terminating connection due to idle timeout (GATEKEEPER_CLIENT_IDLE_TIMEOUT)"}
}
