package wire

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
)

// Transaction pooling.
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

// maxClientMessage bounds one client message in transaction mode, which
// reads messages whole (PostgreSQL's own limit for most messages is 1 GiB).
const maxClientMessage = 1 << 30

// scratchStmt is the statement a Parse of an already prepared text goes
// to: the server checks the text and answers, and nothing the client owns
// (its unnamed statement) is touched.
const scratchStmt = "qc_scratch"

// stmtPrefix names the statements the gateway prepares on backends. Names
// derive from the statement's text and parameter types, so clients that
// prepare the same query share one statement per backend.
const stmtPrefix = "qc_"

// backendState is what transaction mode keeps with a backend connection
// (backend.Conn.Attachment) across the clients that borrow it.
type backendState struct {
	prepared map[string]*list.Element // statement name → element in lru
	lru      *list.List               // of statement names, most recent first
	// settings are the SQL statements last applied for a client's
	// start-up parameters and SETs, by lower-case parameter name.
	settings   map[string]string
	settingsFP string
}

func stateOf(c *backend.Conn) *backendState {
	if st, ok := c.Attachment.(*backendState); ok {
		return st
	}
	st := &backendState{prepared: map[string]*list.Element{}, lru: list.New(), settings: map[string]string{}}
	c.Attachment = st
	return st
}

// clientStmt is a statement a client prepared under its own name.
type clientStmt struct {
	server string // name on backends
	parse  []byte // a whole Parse message under the server name, to inject
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
}

// attachment is one backend held by the client for one transaction.
type attachment struct {
	lease *pool.Lease
	conn  net.Conn
	state *backendState
	since time.Time

	sent        int  // messages answered by a ReadyForQuery (Query, Sync, FunctionCall)
	answered    int  // ReadyForQuery messages received
	lastSettled bool // the last client message needs nothing more to be answered
	txStatus    byte
	pending     []pendingReply
	errInBatch  bool
	pendingSet  *setCommand
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

// txSession is a client session in transaction mode.
type txSession struct {
	ss *session
	pl *pool.Pool

	mu       sync.Mutex
	att      *attachment
	stmts    map[string]*clientStmt
	settings map[string]string // lower-case name → statement applying it
	fp       string
}

// first and firstErr are the client's first read, made in afterStartup's
// shallow frame.
func (ss *session) serveTransactions(pl *pool.Pool, startup []startupSetting, first []byte, firstErr error) string {
	tx := &txSession{ss: ss, pl: pl, stmts: map[string]*clientStmt{}, settings: map[string]string{}}
	for _, st := range startup {
		tx.settings[lowerASCII(st.name)] = setQuery([]startupSetting{st})
	}
	tx.fp = fingerprint(tx.settings)
	// Between transactions the client waits in awaitFirst, whose shallow
	// stack is all an idle client holds.
	var reason string
	for {
		if len(first) == 0 {
			reason = ss.firstReadFailed(firstErr)
			break
		}
		if reason = tx.serve(first); reason != "" {
			break
		}
		first, firstErr = ss.awaitFirst()
	}
	tx.mu.Lock()
	att := tx.att
	tx.att = nil
	tx.mu.Unlock()
	if att != nil {
		tx.finish(att, reason)
	}
	return reason
}

// serve processes client messages, starting with first, until the client
// leaves (the reason is returned) or is between transactions with nothing
// more to read ("").
func (tx *txSession) serve(first []byte) string {
	ss := tx.ss
	var small [128]byte
	buf := small[:]
	pooled := (*[]byte)(nil)
	defer func() {
		if pooled != nil {
			relayBufs.Put(pooled)
		}
	}()
	var out []byte
	r, w := 0, copy(buf, first)
	for {
		// Process every complete message buffered.
		for {
			typ, body, n := nextMessage(buf[r:w])
			if n < 0 {
				ss.send(fatal(codeProtocolViolation, "invalid message length from client"))
				return "protocol-violation"
			}
			if n == 0 {
				break
			}
			r += n
			if typ == 'X' {
				if err := tx.flush(&out); err != nil {
					return reasonForWrite(err)
				}
				return "client-close"
			}
			var err error
			out, err = tx.handle(out, typ, body)
			if err != nil {
				return tx.failAttach(err)
			}
			if len(out) >= relayBufSize {
				if err := tx.flush(&out); err != nil {
					return reasonForWrite(err)
				}
			}
		}
		if err := tx.flush(&out); err != nil {
			return reasonForWrite(err)
		}
		// Make room for the rest of the next message.
		if r == w {
			if reason := tx.answerInline(); reason != "" {
				return reason
			}
			r, w = 0, 0
			if tx.detachedNow() {
				return "" // between transactions: wait with a small stack
			}
		} else if r > 0 {
			w = copy(buf, buf[r:w])
			r = 0
		}
		if need := neededLen(buf[:w]); need > len(buf) {
			if limit := ss.srv.cfg.MaxMessageSize; need > maxClientMessage || (limit > 0 && need-5 > limit) {
				ss.send(fatal(codeProtocolViolation, errTooLarge.Error()))
				return "protocol-violation"
			}
			if need <= relayBufSize && pooled == nil {
				pooled = relayBufs.Get().(*[]byte)
				w = copy(*pooled, buf[:w])
				buf = *pooled
			} else if need > len(buf) {
				grown := make([]byte, need)
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
				return "shutdown"
			}
			if ss.idleExpired() {
				idle := ss.idleTimeoutError()
				ss.send(fatal(idle.code, idle.msg))
				return idle.reason
			}
			return "client-gone"
		}
	}
}

func reasonForWrite(err error) string {
	var ce *clientWriteError
	if errors.As(err, &ce) {
		return "client-gone"
	}
	return "backend-gone"
}

// nextMessage returns the first complete message in b and its size, 0 when
// b holds no complete message, -1 for a corrupt length.
func nextMessage(b []byte) (typ byte, body []byte, n int) {
	if len(b) < 5 {
		return 0, nil, 0
	}
	length := binary.BigEndian.Uint32(b[1:5])
	if length < 4 || length > maxClientMessage {
		return 0, nil, -1
	}
	total := int(length) + 1
	if len(b) < total {
		return 0, nil, 0
	}
	return b[0], b[5:total], total
}

// neededLen is the size of the buffer needed for the message starting b.
func neededLen(b []byte) int {
	if len(b) < 5 {
		return 5
	}
	return int(binary.BigEndian.Uint32(b[1:5])) + 1
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

// handle processes one client message, appending what goes to the backend
// to out. It attaches a backend first if the client has none.
func (tx *txSession) handle(out []byte, typ byte, body []byte) ([]byte, error) {
	tx.mu.Lock()
	att := tx.att
	tx.mu.Unlock()
	if att == nil {
		var err error
		if att, err = tx.attach(); err != nil {
			return out, err
		}
	}
	tx.ss.rc.msgsIn.Add(1)
	tx.mu.Lock()
	defer tx.mu.Unlock()
	seq := att.sent
	switch typ {
	case 'P':
		name, query, rest, ok := splitParse(body)
		if ok && classify(query).listen {
			query = []byte(listenRefusal)
		}
		if !ok || len(name) == 0 {
			att.pending = append(att.pending, pendingReply{typ: 'P', seq: seq})
			if ok {
				out = appendParse(out, "", query, rest)
			} else {
				out = appendRaw(out, typ, body)
			}
			break
		}
		if existing := tx.stmts[string(name)]; existing != nil {
			// A name the client already uses: as PostgreSQL does, the
			// server refuses it (42P05) and the old statement stays.
			out = tx.ensurePrepared(out, att, existing, seq)
			att.pending = append(att.pending, pendingReply{typ: 'P', seq: seq})
			if att.dupNames == nil {
				att.dupNames = map[string]string{}
			}
			att.dupNames[existing.server] = string(name)
			out = appendParse(out, existing.server, query, rest)
			break
		}
		st := &clientStmt{server: serverStmtName(query, rest)}
		st.parse = appendParse(nil, st.server, query, rest)
		tx.stmts[string(name)] = st
		client := pendingReply{typ: 'P', client: string(name), stmt: st, seq: seq}
		if el, ok := att.state.prepared[st.server]; ok {
			// Already there. The client still needs its ParseComplete, in
			// order, and the server's verdict on the text: parse it under
			// a scratch name (closed first, in case the last one stayed).
			att.state.lru.MoveToFront(el)
			tx.ss.rc.prepHits.Add(1)
			att.pending = append(att.pending, pendingReply{typ: 'C', injected: true, seq: seq}, client)
			out = appendClose(out, scratchStmt)
			out = appendParse(out, scratchStmt, query, rest)
			break
		}
		tx.ss.rc.prepMisses.Add(1)
		out = tx.makeRoom(out, att, seq)
		att.state.prepared[st.server] = att.state.lru.PushFront(st.server)
		client.name = st.server
		att.pending = append(att.pending, client)
		out = append(out, st.parse...)
	case 'B':
		portal, stmt, rest, ok := splitBind(body)
		if st := tx.stmts[string(stmt)]; ok && len(stmt) > 0 && st != nil {
			out = tx.ensurePrepared(out, att, st, seq)
			out = appendBind(out, portal, st.server, rest)
			break
		}
		out = appendRaw(out, typ, body)
	case 'D':
		if len(body) > 1 && body[0] == 'S' {
			if name, ok := cBytes(body[1:]); ok {
				if st := tx.stmts[string(name)]; st != nil && len(name) > 0 {
					out = tx.ensurePrepared(out, att, st, seq)
					out = appendDescribe(out, st.server)
					break
				}
			}
		}
		out = appendRaw(out, typ, body)
	case 'C':
		if len(body) > 1 && body[0] == 'S' {
			if name, ok := cBytes(body[1:]); ok && len(name) > 0 {
				// The statement stays on backends for other clients; the
				// client's name goes, and closing a name that does not
				// exist on the server still earns CloseComplete.
				delete(tx.stmts, string(name))
			}
		}
		att.pending = append(att.pending, pendingReply{typ: 'C', seq: seq})
		out = appendRaw(out, typ, body)
	case 'Q':
		query, _ := cBytes(body)
		switch cmd := classify(query); {
		case cmd.listen:
			out = appendQuery(out, listenRefusal)
		case cmd.set != nil:
			cmd.set.seq = seq
			att.pendingSet = cmd.set
			out = appendRaw(out, typ, body)
		default:
			out = appendRaw(out, typ, body)
		}
		tx.ss.rc.queries.Add(1)
	case 'E':
		tx.ss.rc.queries.Add(1)
		out = appendRaw(out, typ, body)
	default:
		out = appendRaw(out, typ, body)
	}
	if typ == 'Q' || typ == 'S' || typ == 'F' {
		att.sent++
		tx.ss.outstanding.Add(1)
	}
	att.lastSettled = settled(typ)
	return out, nil
}

// ensurePrepared injects a Parse for st on the attached backend if the
// statement is not there yet (it was prepared on another backend).
func (tx *txSession) ensurePrepared(out []byte, att *attachment, st *clientStmt, seq int) []byte {
	if el, ok := att.state.prepared[st.server]; ok {
		att.state.lru.MoveToFront(el)
		tx.ss.rc.prepHits.Add(1)
		return out
	}
	tx.ss.rc.prepMisses.Add(1)
	out = tx.makeRoom(out, att, seq)
	att.state.prepared[st.server] = att.state.lru.PushFront(st.server)
	att.pending = append(att.pending, pendingReply{typ: 'P', name: st.server, injected: true, seq: seq})
	return append(out, st.parse...)
}

// makeRoom closes the least recently used statement when the backend holds
// GATEKEEPER_MAX_PREPARED_STATEMENTS already.
func (tx *txSession) makeRoom(out []byte, att *attachment, seq int) []byte {
	limit := tx.ss.srv.cfg.MaxPreparedStatements
	if limit <= 0 {
		limit = 200
	}
	for att.state.lru.Len() >= limit {
		el := att.state.lru.Back()
		name := el.Value.(string)
		att.state.lru.Remove(el)
		delete(att.state.prepared, name)
		att.pending = append(att.pending, pendingReply{typ: 'C', name: name, injected: true, seq: seq})
		out = appendClose(out, name)
		tx.ss.rc.prepEvictions.Add(1)
	}
	return out
}

// attach takes a backend from the pool for the client's next transaction
// and brings its settings in line with the client's.
func (tx *txSession) attach() (*attachment, error) {
	ss := tx.ss
	if !ss.beginTx() {
		return nil, errShuttingDown
	}
	start := time.Now()
	lease, err := tx.pl.Acquire(ss.srv.ctx)
	if err != nil {
		return nil, err
	}
	ss.rc.waitNanos.Add(int64(time.Since(start)))
	conn := lease.Conn()
	state := stateOf(conn)
	if state.settingsFP != tx.fp {
		if q := settingsDiff(state.settings, tx.settings); q != "" {
			ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
			_, err := conn.Exec(ctx, q)
			cancel()
			if err != nil {
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
	att := &attachment{lease: lease, conn: conn.NetConn(), state: state, since: time.Now(),
		txStatus: 'I', lastSettled: true,
		rbuf: relayBufs.Get().(*[]byte), obuf: relayBufs.Get().(*[]byte)}
	att.hold = att.holdArr[:0]
	tx.mu.Lock()
	tx.att = att
	tx.mu.Unlock()
	ss.lease.Store(lease)
	ss.rc.transactions.Add(1)
	return att, nil
}

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

// answerInline waits, on the client's goroutine, for the answers to the
// requests just sent when they all end in a Sync, Query or FunctionCall:
// the client is then waiting too, and a second goroutine would only add
// a hand-off per transaction. It stops when the transaction ends (the
// backend goes back to the pool), when everything is answered inside a
// transaction, when the server waits for COPY data, or after inlineWait;
// it returns the reason the session must end, or "".
func (tx *txSession) answerInline() string {
	tx.mu.Lock()
	att := tx.att
	wait := att != nil && !att.pumping && att.lastSettled && att.sent > att.answered
	tx.mu.Unlock()
	if !wait {
		return ""
	}
	_ = att.conn.SetReadDeadline(time.Now().Add(inlineWait))
	for {
		n, rerr := att.conn.Read(*att.rbuf)
		detach, leftover, err := tx.consume(att, (*att.rbuf)[:n])
		if detach {
			_ = att.conn.SetReadDeadline(time.Time{})
			if err != nil {
				// The only error consume reports with detach; it set a write
				// deadline on the backend, which goes back to the pool.
				_ = att.conn.SetWriteDeadline(time.Time{})
				tx.endAttachment(att, leftover)
				return "client-gone"
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
				return "shutdown"
			case errors.As(err, &cw):
				return "client-gone"
			default:
				return "backend-gone"
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

// endAttachment returns a detached backend to the pool: as it is, unless
// the server said something after the transaction's last answer, which
// leaves it in an unknown state.
func (tx *txSession) endAttachment(att *attachment, leftover bool) {
	if leftover {
		att.lease.Release(pool.ReleaseState{Broken: true})
	} else {
		tx.ss.rc.heldNanos.Add(int64(time.Since(att.since)))
		att.lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
	}
	relayBufs.Put(att.rbuf)
	relayBufs.Put(att.obuf)
	tx.ss.endTx()
}

// settingsError is a client setting the server refused when it was applied
// on a borrowed backend.
type settingsError struct{ err *pgconn.PgError }

func (e *settingsError) Error() string { return e.err.Message }

// failAttach tells the client why it got no backend.
func (tx *txSession) failAttach(err error) string {
	var se *settingsError
	if errors.As(err, &se) {
		resp := fromPgError(se.err)
		resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
		tx.ss.send(resp)
		return "bad-startup"
	}
	var bw *backendWriteError
	if errors.As(err, &bw) {
		return "backend-gone"
	}
	if errors.Is(err, errShuttingDown) {
		return "shutdown" // the client gets 57P01 from shutdown
	}
	tx.ss.refuse(err)
	return reasonOf(err)
}

// detach hands the backend back to the pool between transactions. Called
// by the backend side with tx.mu held, once every request is answered and
// the backend is idle.
func (tx *txSession) canDetachLocked(att *attachment) bool {
	return !att.detached && att.sent == att.answered && att.lastSettled && att.txStatus == 'I'
}

// pumpBackend relays the backend to the client for the rest of one
// attachment, on a goroutine of its own, and ends it when the transaction
// is over.
func (tx *txSession) pumpBackend(att *attachment) error {
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
		length := int(binary.BigEndian.Uint32(att.hold[1:5]))
		if length < 4 || length > maxFrameLen {
			return false, false, errBadFrame
		}
		if typ == '1' || typ == '3' || typ == 'Z' || (typ == 'E' && length < 1<<16 && tx.rewritesErrors(att)) {
			whole := 1 + length
			if (typ != 'E' && whole > 6) || whole < len(att.hold) {
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
			keep, end := tx.onReply(att, typ, msg[5:])
			if keep {
				out = append(out, msg...)
			}
			ss.rc.msgsOut.Add(1)
			detach = end
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
			_ = ss.conn.SetReadDeadline(time.Now())
			_ = att.conn.SetWriteDeadline(time.Now())
			// If the transaction's last answer is in out, the backend is
			// already detached and only the caller can release it.
			return detach, len(p) > 0, &clientWriteError{werr}
		}
	}
	return detach, len(p) > 0, nil
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
				att.pending = append(att.pending[:i], att.pending[i+1:]...)
				return !pr.injected, false
			}
		}
		return true, false
	}
	// ReadyForQuery ends a batch: whatever it did not answer was skipped by
	// the server after an error, so statements parsed there do not exist.
	batch := att.answered
	att.answered++
	if tx.ss.outstanding.Add(-1) == 0 {
		defer tx.ss.armIdle()
	}
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
	if set := att.pendingSet; set != nil && set.seq == batch {
		att.pendingSet = nil
		if !att.errInBatch && att.txStatus == 'I' {
			tx.applySetLocked(att, set)
		}
	}
	att.errInBatch = false
	clear(att.dupNames)
	if tx.canDetachLocked(att) {
		att.detached = true
		tx.att = nil
		tx.ss.lease.Store(nil)
		return true, true
	}
	return true, false
}

func (tx *txSession) rewritesErrors(att *attachment) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return len(att.dupNames) > 0
}

// rewriteError puts the client's statement name in a server error that
// names the gateway's, and notes the error for the batch.
func (tx *txSession) rewriteError(att *attachment, msg []byte) []byte {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	att.errInBatch = true
	var er pgproto3.ErrorResponse
	if er.Decode(msg[5:]) != nil {
		return msg
	}
	for server, client := range att.dupNames {
		if strings.Contains(er.Message, `"`+server+`"`) {
			er.Message = strings.ReplaceAll(er.Message, `"`+server+`"`, `"`+client+`"`)
			if out, err := er.Encode(nil); err == nil {
				return out
			}
		}
	}
	return msg
}

// applySetLocked records a session-level SET or RESET the client ran
// outside a transaction, so it is applied again on every backend the
// client borrows (and undone for the next client of this one).
func (tx *txSession) applySetLocked(att *attachment, set *setCommand) {
	switch {
	case set.resetAll:
		clear(tx.settings)
	case set.reset:
		delete(tx.settings, set.name)
	default:
		tx.settings[set.name] = set.statement
	}
	tx.fp = fingerprint(tx.settings)
	att.state.settings = cloneMap(tx.settings)
	att.state.settingsFP = tx.fp
}

// finish ends the attachment of a client that is leaving.
func (tx *txSession) finish(att *attachment, reason string) {
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
		Clean:     att.sent == att.answered && att.lastSettled && reason != "protocol-violation" && reason != "shutdown",
		Broken:    backendFailed || errors.Is(err, io.EOF) || reason == "backend-gone",
		KeepState: true,
	}
	tx.mu.Unlock()
	tx.ss.rc.heldNanos.Add(int64(time.Since(att.since)))
	att.lease.Release(st)
}

// serverStmtName derives the backend's name for a statement from its text
// and parameter types.
func serverStmtName(query, paramTypes []byte) string {
	h := sha256.New()
	h.Write(query)
	h.Write([]byte{0})
	h.Write(paramTypes)
	return stmtPrefix + hex.EncodeToString(h.Sum(nil)[:12])
}

// fingerprint identifies a set of settings, so a backend whose settings
// already match the client's costs no round trip.
func fingerprint(settings map[string]string) string {
	if len(settings) == 0 {
		return ""
	}
	h := sha256.New()
	for _, name := range sortedKeys(settings) {
		h.Write([]byte(name))
		h.Write([]byte{0})
		h.Write([]byte(settings[name]))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// settingsDiff is the SQL that turns a backend's settings from have into
// want: RESET what only have set, and apply what want sets differently.
func settingsDiff(have, want map[string]string) string {
	var q []byte
	for _, name := range sortedKeys(have) {
		if _, ok := want[name]; !ok {
			q = append(q, "RESET "...)
			q = append(q, quoteIdent(name)...)
			q = append(q, ';')
		}
	}
	for _, name := range sortedKeys(want) {
		if have[name] != want[name] {
			q = append(q, want[name]...)
			q = append(q, ';')
		}
	}
	return string(q)
}
