package wire

import (
	"container/list"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/reasons"

	"github.com/querycop/querycop/backend"
)

// Transaction pooling.
//
// Isolation is the invariant: what a client can observe is its own
// session, never another's (settings, role, temporary objects, locks,
// prepared or unnamed statements, portals, results, notifications). State
// the gateway can replay exactly is carried from backend to backend; the
// rest pins the client to its backend until it disconnects, and the
// backend is reset before anyone else gets it (txeffects.go).
//
// A client holds a backend only from its first message until the backend
// reports ReadyForQuery 'I' with every request answered; then the backend
// goes back to the pool without a reset, and the next message attaches
// whichever backend the pool hands out.
//
// The client side (this session's goroutine) reads whole messages, so it
// can rename prepared statements and prepare them on a backend that lacks
// them. The backend side (one goroutine per attachment) walks message
// headers, drops the answers to messages the gateway injected, and decides
// when to detach. Both share txSession.mu, held only briefly, never across
// I/O.

// backendState is what transaction mode keeps with a backend connection
// (backend.Conn.Attachment) across the clients that borrow it.
type backendState struct {
	prepared map[string]*list.Element // statement name → element in lru
	lru      *list.List               // of statement names, most recent first
	// settings are the SQL statements last applied for a client's
	// start-up parameters and SETs, by lower-case parameter name; nil when
	// unknown (after a client's DISCARD ALL), so the next client's are
	// applied after a RESET ALL.
	settings   map[string]string
	settingsFP string
	// closeFirst: statements the gateway no longer tracks may still be on
	// the backend (a DEALLOCATE that failed), so each Parse of a gateway
	// name is preceded by a Close of it.
	closeFirst bool
}

func stateOf(c *backend.Conn) *backendState {
	if st, ok := c.Attachment.(*backendState); ok {
		return st
	}
	st := &backendState{prepared: map[string]*list.Element{}, lru: list.New(), settings: map[string]string{}}
	c.Attachment = st
	return st
}

// pendingReply is a message sent to the backend whose reply the backend
// side must recognise: it drops the replies to injected messages, and
// forgets statements whose Parse the server skipped after an error.
type pendingReply struct {
	typ byte // 'P' or 'C'
	// name is the server statement the message creates ('P') or closes
	// (an injected 'C'); "" when the gateway does not track it.
	name     string
	injected bool
	seq      int // which ReadyForQuery ends the batch it is in
	// client and stmt: the client's statement name a 'P' defines, so it
	// can be forgotten if the server skips or refuses the Parse.
	client string
	stmt   *clientStmt
	// unnamed is the client's unnamed statement this Parse defines.
	unnamed *clientStmt
}

// attachment is one backend held by the client for one transaction.
type attachment struct {
	lease Lease
	conn  net.Conn
	state *backendState
	since time.Time

	sent        int  // messages answered by a ReadyForQuery (Query, Sync, FunctionCall)
	answered    int  // ReadyForQuery messages received
	lastSettled bool // the last client message needs nothing more to be answered
	txStatus    byte
	pending     []pendingReply
	// pendingArr backs pending for the usual few replies of a
	// transaction: one allocation with the attachment, not several.
	pendingArr [4]pendingReply
	errInBatch bool
	// pendingSets are tracked SETs sent and not yet answered; txSets those
	// that ran inside the open transaction block, kept if it commits.
	pendingSets []*setCommand
	txSets      []*setCommand
	// ends are the batches sent whose statements end a transaction block,
	// and how, oldest first: a pipeline may hold several; sawSavepoint:
	// the transaction used savepoints, which a tracked SET cannot follow.
	ends         []batchEnd
	sawSavepoint bool
	savepointSeq int
	// reports are ParameterStatus messages for the client, sent before
	// the next ReadyForQuery.
	reports []byte
	// unnamedHere: the backend's unnamed statement is the client's (or
	// neither has one).
	unnamedHere bool
	// tainted: the server sent something meant for another client (a
	// notification); the backend is reset before anyone else gets it.
	tainted bool
	// skip is the body bytes still to drop of a message not forwarded.
	skip int
	// injectedBatches are the batches (by sequence) of queries the gateway
	// sent itself, whose answers are dropped.
	injectedBatches []int
	// pinnedIdle: a pinned client's requests are all answered outside a
	// transaction (the point where an unpinned one detaches); txIdle:
	// shutdown was told so, and the next request tells it otherwise.
	pinnedIdle, txIdle bool
	// dupNames maps a server statement name to the client's, for a Parse
	// of a name the client already uses: the server's 42P05 names the
	// server statement and is rewritten to name the client's.
	dupNames map[string]string
	detached bool

	// The backend side. Its reader state lives here because it runs in
	// one of two places: on the client's goroutine, which waits for the
	// answers itself after sending requests that all end in a Sync or a
	// Query (the common case: no goroutine per transaction), or on a
	// goroutine of its own (pumping), started the first time the client
	// side has to read the client while the backend may still speak.
	rbuf, obuf *[]byte
	hold       []byte
	holdArr    [64]byte
	need       int  // body bytes still to forward of a streamed message
	copyIn     bool // the server waits for the client's CopyData
	pumping    bool
	done       chan error // the pumping goroutine's end
	endErr     error      // how the inline backend side ended, when it did
}

// batchEnd is how a batch's statements end a transaction block.
type batchEnd struct {
	seq int
	end txEnd
}

// txSession is a client session in transaction mode.
type txSession struct {
	ss *session
	pl Pool

	mu       sync.Mutex
	att      *attachment
	stmts    map[string]*clientStmt
	unnamed  *clientStmt       // the client's unnamed statement, if any
	settings map[string]string // lower-case name → statement applying it
	startup  map[string]string // the start-up settings, which RESET restores
	// startupValues are the start-up settings' values, by lower-case
	// name, as the client was told them at start-up.
	startupValues map[string]string
	fp            string
	// pinned is why the client keeps its backend until it leaves; "" when
	// it does not.
	pinned pinReason
	// listened: the client ran LISTEN (or a DO block that may have), so
	// notifications on its backend may be its own.
	listened bool
	scan     sqlScanner // the client side's, reused for every statement
	// skipping: the client side drops the rest of a batch that was
	// cancelled while it waited for a backend (cancelwait.go).
	skipping bool
	// backendLost: the backend side ended on its own (the server closed
	// the connection or broke the protocol) while the client side may be
	// blocked reading the client; it is woken, and the session ends.
	backendLost atomic.Bool
	// small receives the client's next request between transactions and
	// holds small requests: kept here rather than made per transaction,
	// and large enough for a typical extended-protocol batch (Parse, Bind,
	// Describe, Execute, Sync), which otherwise arrives split and makes
	// the backend side start a goroutine while the rest is read.
	small [256]byte
}

// bytesView reads b as a string without copying it. The string must not
// outlive b's contents: what the analysis keeps is cloned.
func bytesView(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// first and firstErr are the client's first read, made in afterStartup's
// shallow frame.
func (ss *session) serveTransactions(pl Pool, startup []startupSetting, first []byte, firstErr error) reasons.Reason {
	tx := &txSession{ss: ss, pl: pl, stmts: map[string]*clientStmt{}, settings: map[string]string{}}
	for _, st := range startup {
		tx.settings[lowerASCII(st.name)] = setQuery([]startupSetting{st})
	}
	tx.startup = cloneMap(tx.settings)
	tx.startupValues = make(map[string]string, len(startup))
	for _, st := range startup {
		tx.startupValues[lowerASCII(st.name)] = st.value
	}
	tx.fp = fingerprint(tx.settings)
	for _, st := range startup {
		if lowerASCII(st.name) == "client_encoding" && unsafeClientEncoding(st.value) {
			tx.mu.Lock()
			tx.pinLocked(pinSet)
			tx.mu.Unlock()
		}
	}
	// Between transactions the client waits in awaitFirst, whose shallow
	// stack is all an idle client holds.
	var reason reasons.Reason
	for {
		if len(first) == 0 {
			reason = ss.firstReadFailed(firstErr)
			break
		}
		if reason = tx.serve(first); reason != "" {
			break
		}
		first, firstErr = ss.awaitFirst(tx.small[:])
	}
	tx.mu.Lock()
	att := tx.att
	tx.att = nil
	pinned := tx.pinned != ""
	tx.mu.Unlock()
	if att != nil {
		tx.finish(att, reason)
	}
	if pinned {
		ss.srv.pinnedNow.Add(-1)
	}
	return reason
}

// serve processes client messages, starting with first, until the client
// leaves (the reason is returned) or is between transactions with nothing
// more to read ("").
func (tx *txSession) serve(first []byte) reasons.Reason {
	ss := tx.ss
	buf := tx.small[:]
	pooled := (*[]byte)(nil)
	// What goes to the backend is gathered in a pooled buffer: per
	// transaction, a new one would grow from nothing.
	outp := relayBufs.Get().(*[]byte)
	defer func() {
		relayBufs.Put(outp)
		if pooled != nil {
			relayBufs.Put(pooled)
		}
	}()
	out := (*outp)[:0]
	r, w := 0, copy(buf, first)
	for {
		// Process every complete message buffered.
		for {
			typ, body, n := pgframe.Next(buf[r:w])
			if n < 0 {
				ss.send(fatal(codeProtocolViolation, "invalid message length from client"))
				return reasons.ProtocolViolation
			}
			if n == 0 {
				break
			}
			r += n
			if typ == 'X' {
				if err := tx.flush(&out); err != nil {
					return reasonForWrite(err)
				}
				return reasons.ClientClose
			}
			if tx.skipping { // the rest of a batch cancelled before it had a backend
				if tx.skipping = !ss.endsBatch(typ); !tx.skipping {
					ss.batchSkipped(r < w) // before the client can send a late cancel
					if err := ss.answerCancelledEnd(); err != nil {
						return reasons.ClientGone
					}
				}
				continue
			}
			var err error
			out, err = tx.handle(out, typ, body)
			if errors.Is(err, errCancelled) {
				if tx.skipping, err = ss.answerCancelled(typ); err != nil {
					return reasons.ClientGone
				}
				continue
			}
			if err != nil {
				return tx.failAttach(err)
			}
			if len(out) >= relayBufSize {
				if err := tx.flush(&out); err != nil {
					return reasonForWrite(err)
				}
			}
		}
		// Make room for the rest of the next message.
		if r == w {
			// Everything the client sent is handled: send it and, when
			// the client now waits for the answers, read them here.
			if reason := tx.answerInline(&out); reason != "" {
				return reason
			}
			r, w = 0, 0
			if tx.detachedNow() {
				return "" // between transactions: wait with a small stack
			}
		} else {
			if err := tx.flush(&out); err != nil {
				return reasonForWrite(err)
			}
			if r > 0 {
				w = copy(buf, buf[r:w])
				r = 0
			}
		}
		if need := neededLen(buf[:w]); need > len(buf) {
			if limit := ss.srv.cfg.MaxMessageSize; limit > 0 && need-pgframe.HeaderLen > limit {
				ss.send(fatal(codeProtocolViolation, errTooLarge.Error()))
				return reasons.ProtocolViolation
			}
			// Grow with the data, never to the length a client merely
			// claims: a header announcing 250 MiB costs nothing until the
			// bytes arrive, and then at most twice what arrived.
			switch {
			case pooled == nil && w <= relayBufSize:
				pooled = relayBufs.Get().(*[]byte)
				w = copy(*pooled, buf[:w])
				buf = *pooled
			case w == len(buf):
				grown := make([]byte, min(need, 2*len(buf)))
				w = copy(grown, buf[:w])
				buf = grown
			}
		}
		tx.startPump()
		ss.armIdle()
		n, err := ss.conn.Read(buf[w:])
		w += n
		if err != nil && n == 0 {
			if ss.killed.Load() {
				return reasons.Shutdown
			}
			if tx.backendLost.Load() {
				return reasons.BackendGone // the client has the server's last words
			}
			if ss.idleExpired() {
				idle := ss.idleTimeoutError()
				ss.send(fatal(idle.code, idle.msg))
				return idle.reason
			}
			return reasons.ClientGone
		}
	}
}

func reasonForWrite(err error) reasons.Reason {
	var ce *clientWriteError
	if errors.As(err, &ce) {
		return reasons.ClientGone
	}
	return reasons.BackendGone
}

// neededLen is the size of the buffer needed for the message starting b.
// A length pgframe refuses needs no room: pgframe.Next has already ended
// the session for it when the header is whole.
func neededLen(b []byte) int {
	if len(b) < pgframe.HeaderLen {
		return pgframe.HeaderLen
	}
	return pgframe.HeaderLen + max(pgframe.Len(b), 0)
}

func (tx *txSession) detachedNow() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.att == nil
}

// flush writes the messages gathered for the attached backend.
func (tx *txSession) flush(out *[]byte) error {
	if len(*out) == 0 {
		return nil
	}
	tx.mu.Lock()
	att := tx.att
	tx.mu.Unlock()
	if att == nil {
		*out = (*out)[:0]
		return errors.New("no backend attached")
	}
	_, err := att.conn.Write(*out)
	tx.ss.rc.bytesIn.Add(int64(len(*out)))
	*out = (*out)[:0]
	if err != nil {
		return &backendWriteError{err}
	}
	return nil
}
