package wire

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
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

// maxClientMessage bounds one client message in transaction mode, which
// reads messages whole (PostgreSQL's own limit for most messages is 1 GiB).
const maxClientMessage = 1 << 30

// scratchStmt is the statement a Parse of an already prepared text goes
// to: the server checks the text and answers, and nothing the client owns
// (its unnamed statement) is touched.
const scratchStmt = "qc_scratch"

// stmtPrefix names the statements the gateway prepares on backends. Names
// are a hash of the statement's text and parameter types keyed with a
// random key per Server: clients that prepare the same query share one
// statement per backend, and no client can compute a name to create,
// replace or drop a statement the gateway made for someone else.
const stmtPrefix = "qc_"

// newStmtNameKey is the key of a Server's statement names.
func newStmtNameKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("wire: no randomness for statement names: " + err.Error())
	}
	return k
}

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

// unknownSettings is the fingerprint of a backend whose settings are not
// known; no client's fingerprint equals it.
const unknownSettings = "?"

// forgetStatements records that the backend may have lost every statement.
func (st *backendState) forgetStatements() {
	clear(st.prepared)
	st.lru.Init()
	st.closeFirst = true
}

// forget records that the backend may have lost one statement.
func (st *backendState) forget(name string) {
	if el, ok := st.prepared[name]; ok {
		st.lru.Remove(el)
		delete(st.prepared, name)
	}
	st.closeFirst = true
}

func stateOf(c *backend.Conn) *backendState {
	if st, ok := c.Attachment.(*backendState); ok {
		return st
	}
	st := &backendState{prepared: map[string]*list.Element{}, lru: list.New(), settings: map[string]string{}}
	c.Attachment = st
	return st
}

// clientStmt is a statement a client prepared under its own name, or its
// unnamed statement.
type clientStmt struct {
	server string // name on backends ("" for the unnamed statement)
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
	// unnamed is the client's unnamed statement this Parse defines.
	unnamed *clientStmt
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
	// pendingSets are tracked SETs sent and not yet answered; txSets those
	// that ran inside the open transaction block, kept if it commits.
	pendingSets []*setCommand
	txSets      []*setCommand
	// lastEnd is how the client's last statement ends a transaction
	// block, and the batch it is in; sawSavepoint: the transaction used
	// savepoints, which a tracked SET cannot follow.
	lastEnd      txEnd
	lastEndSeq   int
	sawSavepoint bool
	savepointSeq int
	// unnamedHere: the backend's unnamed statement is the client's (or
	// neither has one).
	unnamedHere bool
	// tainted: the server sent something meant for another client (a
	// notification); the backend is reset before anyone else gets it.
	tainted bool
	// skip is the body bytes still to drop of a message not forwarded.
	skip int
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
	unnamed  *clientStmt       // the client's unnamed statement, if any
	settings map[string]string // lower-case name → statement applying it
	startup  map[string]string // the start-up settings, which RESET restores
	fp       string
	// pinned is why the client keeps its backend until it leaves; "" when
	// it does not.
	pinned pinReason
	scan   sqlScanner // the client side's, reused for every statement
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
func (ss *session) serveTransactions(pl *pool.Pool, startup []startupSetting, first []byte, firstErr error) string {
	tx := &txSession{ss: ss, pl: pl, stmts: map[string]*clientStmt{}, settings: map[string]string{}}
	for _, st := range startup {
		tx.settings[lowerASCII(st.name)] = setQuery([]startupSetting{st})
	}
	tx.startup = cloneMap(tx.settings)
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
		if !ok {
			att.pending = append(att.pending, pendingReply{typ: 'P', seq: seq})
			out = appendRaw(out, typ, body)
			break
		}
		fx := analyzeQuery(&tx.scan, bytesView(query), false)
		if fx.set != nil && fx.pin == "" {
			// SET through the extended protocol: not replayed.
			fx.pin = pinSet
			if fx.set.discardAll {
				fx.pin = pinDiscard
			}
		}
		query, _ = tx.applyEffectsLocked(att, fx, query, seq)
		if len(name) == 0 {
			// The unnamed statement: the client's until its next Parse or
			// simple Query, re-established on any backend it borrows.
			un := &clientStmt{parse: appendParse(nil, "", query, rest)}
			tx.unnamed = un
			att.unnamedHere = true
			att.pending = append(att.pending, pendingReply{typ: 'P', seq: seq, unnamed: un})
			out = append(out, un.parse...)
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
		st := &clientStmt{server: serverStmtName(tx.ss.srv.stmtKey, query, rest)}
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
		out = tx.closeIfUnknown(out, att, st.server, seq)
		att.state.prepared[st.server] = att.state.lru.PushFront(st.server)
		client.name = st.server
		att.pending = append(att.pending, client)
		out = append(out, st.parse...)
	case 'B':
		portal, stmt, rest, ok := splitBind(body)
		if !ok {
			out = appendRaw(out, typ, body)
			break
		}
		if len(stmt) == 0 {
			out = tx.ensureUnnamed(out, att, seq)
			out = appendRaw(out, typ, body)
			break
		}
		if st := tx.stmts[string(stmt)]; st != nil {
			out = tx.ensurePrepared(out, att, st, seq)
			out = appendBind(out, portal, st.server, rest)
			break
		}
		out = appendRaw(out, typ, body)
	case 'D':
		if len(body) > 1 && body[0] == 'S' {
			if name, ok := cBytes(body[1:]); ok {
				if len(name) == 0 {
					out = tx.ensureUnnamed(out, att, seq)
				} else if st := tx.stmts[string(name)]; st != nil {
					out = tx.ensurePrepared(out, att, st, seq)
					out = appendDescribe(out, st.server)
					break
				}
			}
		}
		out = appendRaw(out, typ, body)
	case 'C':
		if len(body) > 1 && body[0] == 'S' {
			if name, ok := cBytes(body[1:]); ok {
				if len(name) == 0 {
					// The backend's unnamed statement goes, whoever's it was.
					tx.unnamed = nil
					att.unnamedHere = true
				} else {
					// The statement stays on backends for other clients; the
					// client's name goes, and closing a name that does not
					// exist on the server still earns CloseComplete.
					delete(tx.stmts, string(name))
				}
			}
		}
		att.pending = append(att.pending, pendingReply{typ: 'C', seq: seq})
		out = appendRaw(out, typ, body)
	case 'Q':
		query, _ := cBytes(body)
		fx := analyzeQuery(&tx.scan, bytesView(query), true)
		if set := fx.set; set != nil && fx.pin == "" && tx.pinned == "" {
			set.seq = seq
			att.pendingSets = append(att.pendingSets, set)
		}
		rewritten, changed := tx.applyEffectsLocked(att, fx, query, seq)
		// A simple Query drops the unnamed statement, on the server and
		// so for the client.
		tx.unnamed = nil
		att.unnamedHere = true
		if changed {
			out = appendQuery(out, string(rewritten))
		} else {
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

// ensureUnnamed puts the client's unnamed statement on the attached
// backend before a Bind or Describe of it: the backend's own unnamed
// statement is whatever the last client that used it left there. A client
// with no unnamed statement gets the server's 26000, as on a direct
// connection, through a Close of the backend's.
func (tx *txSession) ensureUnnamed(out []byte, att *attachment, seq int) []byte {
	if att.unnamedHere {
		return out
	}
	att.unnamedHere = true
	if un := tx.unnamed; un != nil {
		att.pending = append(att.pending, pendingReply{typ: 'P', injected: true, seq: seq, unnamed: un})
		return append(out, un.parse...)
	}
	att.pending = append(att.pending, pendingReply{typ: 'C', injected: true, seq: seq})
	return appendClose(out, "")
}

// applyEffectsLocked acts on what a Query or Parse does to the session:
// it pins the client (or, with GATEKEEPER_TX_PINNING=refuse, returns a
// query that fails with 0A000 instead), keeps the gateway's record of the
// backend's statements true after DEALLOCATE and DISCARD ALL, and renames
// the client's statements in DEALLOCATE. It returns the query to send and
// whether it differs from the client's.
func (tx *txSession) applyEffectsLocked(att *attachment, fx queryEffects, query []byte, seq int) ([]byte, bool) {
	if fx.end != txEndNone {
		att.lastEnd, att.lastEndSeq = fx.end, seq
	}
	if fx.savepoint || fx.prepareTx {
		att.sawSavepoint, att.savepointSeq = true, seq
		if len(att.txSets) > 0 || len(att.pendingSets) > 0 {
			fx.pin = firstNonEmpty(fx.pin, pinSet)
		}
	}
	if fx.set != nil && att.sawSavepoint && fx.pin == "" {
		fx.pin = pinSet
	}
	for _, d := range fx.deallocs {
		if tx.pinned != "" || fx.pin != "" {
			break
		}
		if _, mine := tx.stmts[d.name]; !mine {
			fx.pin = pinDeallocate
		}
	}
	if fx.pin != "" && tx.pinned == "" {
		if tx.ss.srv.cfg.TxPinning == TxPinningRefuse {
			return []byte(pinRefusal(fx.pin)), true
		}
		tx.pinLocked(fx.pin)
	}
	if fx.deallocAll {
		// Every statement on this backend is gone (or, if the command
		// fails, may still be there: Parse is then preceded by Close).
		clear(tx.stmts)
		att.state.forgetStatements()
		if fx.set != nil && fx.set.discardAll || fx.pin == pinDiscard {
			att.state.settings, att.state.settingsFP = nil, unknownSettings
		}
	}
	if len(fx.deallocs) == 0 || tx.pinned != "" {
		return query, false
	}
	// DEALLOCATE of the client's own statements: the server knows them
	// under the gateway's names.
	var b []byte
	last := 0
	for _, d := range fx.deallocs {
		st := tx.stmts[d.name]
		if st == nil {
			continue
		}
		b = append(b, query[last:d.start]...)
		b = append(b, quoteIdent(st.server)...)
		last = d.end
		delete(tx.stmts, d.name)
		att.state.forget(st.server)
	}
	return append(b, query[last:]...), true
}

func firstNonEmpty(a, b pinReason) pinReason {
	if a != "" {
		return a
	}
	return b
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
	out = tx.closeIfUnknown(out, att, st.server, seq)
	att.state.prepared[st.server] = att.state.lru.PushFront(st.server)
	att.pending = append(att.pending, pendingReply{typ: 'P', name: st.server, injected: true, seq: seq})
	return append(out, st.parse...)
}

// closeIfUnknown closes a gateway statement before it is parsed on a
// backend that may still hold it untracked.
func (tx *txSession) closeIfUnknown(out []byte, att *attachment, name string, seq int) []byte {
	if !att.state.closeFirst {
		return out
	}
	att.pending = append(att.pending, pendingReply{typ: 'C', injected: true, seq: seq})
	return appendClose(out, name)
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
	if state.settingsFP != tx.fp || state.settings == nil {
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
		tx.mu.Lock()
		st := tx.sessionReset(att, pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		tx.mu.Unlock()
		att.lease.Release(st)
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

// canDetachLocked reports whether the backend can go back to the pool: the
// client is between transactions with every request answered, and is not
// pinned. Called with tx.mu held.
func (tx *txSession) canDetachLocked(att *attachment) bool {
	return !att.detached && tx.pinned == "" && att.sent == att.answered && att.lastSettled && att.txStatus == 'I'
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
		length := int(binary.BigEndian.Uint32(att.hold[1:5]))
		if length < 4 || length > maxFrameLen {
			return false, false, errBadFrame
		}
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
	if tx.canDetachLocked(att) {
		att.detached = true
		tx.att = nil
		tx.ss.lease.Store(nil)
		return true, true
	}
	return true, false
}

// settleSetsLocked records the tracked SETs a ReadyForQuery answered, as
// PostgreSQL keeps them: at once outside a transaction block; inside one,
// only if the block commits (ROLLBACK, an error or a failed COMMIT undo
// them).
func (tx *txSession) settleSetsLocked(att *attachment, batch int, prev byte) {
	kept := att.pendingSets[:0]
	for _, set := range att.pendingSets {
		switch {
		case set.seq > batch:
			kept = append(kept, set)
		case set.seq < batch || att.errInBatch:
			// failed or skipped
		case att.txStatus == 'I':
			tx.applySetLocked(att, set)
		case att.txStatus == 'T':
			att.txSets = append(att.txSets, set)
		}
	}
	clear(att.pendingSets[len(kept):])
	att.pendingSets = kept
	if att.txStatus == 'I' && batch >= att.savepointSeq {
		att.sawSavepoint = false
	}
	if att.txStatus != 'I' || prev == 'I' {
		return
	}
	// The transaction block ended with this batch.
	if prev == 'T' && !att.errInBatch && att.lastEnd == txEndCommit && att.lastEndSeq == batch {
		for _, set := range att.txSets {
			tx.applySetLocked(att, set)
		}
	}
	att.txSets = nil
}

// dropsNotifications reports whether a NotificationResponse must not reach
// this client: only a pinned client can have listened on this backend.
func (tx *txSession) dropsNotifications() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.pinned == ""
}

// onParameterStatus pins the client when the server reports a setting
// change the gateway neither made nor tracks: a function or DO block
// changed the session, and only this backend holds that change.
func (tx *txSession) onParameterStatus(att *attachment, body []byte) {
	raw, _ := cBytes(body)
	name := lowerASCII(string(raw))
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.pinned != "" {
		return
	}
	switch name {
	case "in_hot_standby", "default_transaction_read_only":
		return // the server's state, not the session's
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

// applySetLocked records a session-level SET, RESET or DISCARD ALL that
// took effect, so the client's settings follow it to every backend it
// borrows, and the backend's record says what it now holds. RESET goes
// back to the start-up value, as in PostgreSQL; on the backend it goes
// back to the pool's default, so the start-up value is applied again on
// the next attach.
func (tx *txSession) applySetLocked(att *attachment, set *setCommand) {
	have := att.state.settings
	switch {
	case set.resetAll, set.discardAll:
		tx.settings = cloneMap(tx.startup)
		att.state.settings = map[string]string{}
	case set.reset:
		if v, ok := tx.startup[set.name]; ok {
			tx.settings[set.name] = v
		} else {
			delete(tx.settings, set.name)
		}
		if have != nil {
			delete(have, set.name)
		}
	default:
		tx.settings[set.name] = set.statement
		if have != nil {
			have[set.name] = set.statement
		}
	}
	tx.fp = fingerprint(tx.settings)
	if att.state.settings == nil {
		att.state.settingsFP = unknownSettings
	} else {
		att.state.settingsFP = fingerprint(att.state.settings)
	}
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
	st = tx.sessionReset(att, st)
	tx.mu.Unlock()
	tx.ss.rc.heldNanos.Add(int64(time.Since(att.since)))
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

// pinLocked keeps the client on its backend until it disconnects. Called
// with tx.mu held.
func (tx *txSession) pinLocked(reason pinReason) {
	if tx.pinned != "" {
		return
	}
	tx.pinned = reason
	tx.ss.srv.counters.pin(reason)
	tx.ss.srv.pinnedNow.Add(1)
	tx.ss.setView(func(v *ClientInfo) { v.Pinned = string(reason) })
	tx.ss.sharedLog().Info().Str("reason", string(reason)).Msg("client pinned to its backend until it disconnects")
}

// serverStmtName derives the backend's name for a statement from its text
// and parameter types.
func serverStmtName(key, query, paramTypes []byte) string {
	h := hmac.New(sha256.New, key)
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
	if have == nil {
		q = append(q, "RESET ALL;"...)
	}
	for _, name := range sortedKeys(have) {
		if _, ok := want[name]; !ok {
			q = append(q, "RESET "...)
			q = append(q, quoteQualified(name)...)
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
