package wire

import "encoding/binary"

// Transaction mode, what each client message becomes on the backend:
// statement names renamed to the gateway's, statements prepared on a
// backend that lacks them, SETs tracked for replay, and what pins the
// client to its backend (see txstatements.go, txeffects.go).

// handle processes one client message, appending what goes to the backend
// to out. It attaches a backend first if the client has none.
func (tx *txSession) handle(out []byte, typ byte, body []byte) ([]byte, error) {
	tx.mu.Lock()
	att := tx.att
	resume := att != nil && att.txIdle
	if resume {
		att.txIdle = false
	}
	tx.mu.Unlock()
	switch {
	case att == nil:
		var err error
		if att, err = tx.attach(); err != nil {
			return out, err
		}
	case resume && !tx.ss.beginTx():
		// A pinned client's next transaction, after shutdown closed it.
		return out, errShuttingDown
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
			un := &clientStmt{parse: appendParse(nil, "", query, rest), end: fx.end, savepoint: fx.savepoint || fx.prepareTx}
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
		st := &clientStmt{server: serverStmtName(tx.ss.srv.stmtKey, query, rest), end: fx.end, savepoint: fx.savepoint || fx.prepareTx}
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
			if un := tx.unnamed; un != nil {
				tx.noteRunLocked(att, un, seq)
			}
			out = tx.ensureUnnamed(out, att, seq)
			out = appendRaw(out, typ, body)
			break
		}
		if st := tx.stmts[string(stmt)]; st != nil {
			tx.noteRunLocked(att, st, seq)
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
				} else if tx.pinned == "" {
					// The statement stays on backends for other clients; the
					// client's name goes. The server closes the scratch
					// statement instead, never a name the client chose: that
					// could be a statement the gateway keeps for another
					// client (read from pg_prepared_statements). Closing
					// earns CloseComplete whether the name exists or not.
					delete(tx.stmts, string(name))
					att.pending = append(att.pending, pendingReply{typ: 'C', seq: seq})
					out = appendClose(out, scratchStmt)
					break
				} else {
					delete(tx.stmts, string(name))
				}
			}
		}
		att.pending = append(att.pending, pendingReply{typ: 'C', seq: seq})
		out = appendRaw(out, typ, body)
	case 'Q':
		query, _ := cBytes(body)
		fx := analyzeQuery(&tx.scan, bytesView(query), true)
		if fx.set != nil && fx.set.name == "client_encoding" && tx.nonASCIISettingsLocked() {
			// Settings written in the old encoding cannot be applied
			// again after the new one (txsettings.go: settingsDiff).
			fx.pinFor(pinSet)
		}
		if set := fx.set; set != nil && fx.pin == "" && tx.pinned == "" {
			set.seq = seq
			att.pendingSets = append(att.pendingSets, set)
		}
		rewritten, changed := tx.applyEffectsLocked(att, fx, query, seq)
		noteEndLocked(att, fx.end, seq)
		// A simple Query drops the unnamed statement, on the server and
		// so for the client.
		tx.unnamed = nil
		att.unnamedHere = true
		if changed {
			out = appendQuery(out, string(rewritten))
		} else {
			out = appendRaw(out, typ, body)
		}
		if restore := tx.startupRestoreLocked(fx); restore != "" && !changed {
			// The server's RESET goes back to the pool's default; the
			// client's start-up value follows at once, in a query of the
			// gateway's whose answers the client never sees.
			att.injectedBatches = append(att.injectedBatches, seq+1)
			att.sent++
			out = appendQuery(out, restore)
		}
		tx.ss.rc.queries.Add(1)
	case 'E':
		tx.ss.rc.queries.Add(1)
		out = appendRaw(out, typ, body)
	case 'F':
		// A fast-path call runs a function by OID, with no SQL to read:
		// set_config or pg_advisory_lock this way change the session.
		// Only the large-object functions libpq calls so are known to
		// leave nothing behind (their descriptors end with the
		// transaction).
		if tx.pinned == "" && (len(body) < 4 || !largeObjectFunctions[binary.BigEndian.Uint32(body)]) {
			if tx.ss.srv.cfg.TxPinning == TxPinningRefuse {
				// Answered as a failed call is: ErrorResponse, then
				// ReadyForQuery.
				out = appendQuery(out, pinRefusal(pinFunctionCall))
				break
			}
			tx.pinLocked(pinFunctionCall)
		}
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
