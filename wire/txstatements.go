package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction mode, statements: the names the gateway gives them on
// backends, the per-backend LRU of prepared statements, the client's
// unnamed statement, and what DEALLOCATE and DISCARD ALL do to them.

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

// clientStmt is a statement a client prepared under its own name, or its
// unnamed statement.
type clientStmt struct {
	server string // name on backends ("" for the unnamed statement)
	parse  []byte // a whole Parse message under the server name, to inject
	// end and savepoint: what running the statement does to a
	// transaction block, noted at each Bind of it.
	end       txEnd
	savepoint bool
}

// noteEndLocked records that batch seq ends a transaction block; a batch
// that ends one more than one way is in doubt.
func noteEndLocked(att *attachment, end txEnd, seq int) {
	if end == txEndNone {
		return
	}
	if n := len(att.ends); n > 0 && att.ends[n-1].seq == seq {
		if att.ends[n-1].end != end {
			att.ends[n-1].end = txEndUnknown
		}
		return
	}
	att.ends = append(att.ends, batchEnd{seq: seq, end: end})
}

// noteRunLocked records what a Bind of st does to the transaction block:
// the statement runs in batch seq, whenever it was parsed.
func (tx *txSession) noteRunLocked(att *attachment, st *clientStmt, seq int) {
	noteEndLocked(att, st.end, seq)
	if st.savepoint {
		att.sawSavepoint, att.savepointSeq = true, seq
		if len(att.txSets) > 0 || len(att.pendingSets) > 0 {
			// Too late to refuse: the Parse was answered long ago.
			tx.pinLocked(pinSet)
		}
	}
}

// largeObjectFunctions are the OIDs (fixed in pg_proc.dat) of the functions
// libpq's large-object API calls through FunctionCall.
var largeObjectFunctions = map[uint32]bool{
	715: true, 952: true, 953: true, 954: true, 955: true, 956: true, 957: true, 958: true,
	964: true, 1004: true, 3170: true, 3171: true, 3172: true,
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
	if fx.listen {
		tx.listened = true
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

// serverStmtName derives the backend's name for a statement from its text
// and parameter types.
func serverStmtName(key, query, paramTypes []byte) string {
	h := hmac.New(sha256.New, key)
	h.Write(query)
	h.Write([]byte{0})
	h.Write(paramTypes)
	return stmtPrefix + hex.EncodeToString(h.Sum(nil)[:12])
}
