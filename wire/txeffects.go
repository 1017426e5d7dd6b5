package wire

import "strings"

// What a client's SQL does to its session, as transaction mode needs to
// know it. Isolation is the invariant: a client observes its own session,
// never another's. Session state the gateway can replay exactly (plain
// SET and RESET of a setting, outside or inside a transaction block) is
// carried from backend to backend; anything else pins the client to its
// backend until it disconnects, and the backend is reset before anyone
// else gets it.

// pinReason says why a client keeps its backend. The values are metric
// labels and appear in /v1/clients and the log.
type pinReason string

const (
	pinSet             pinReason = "set"                     // a SET or RESET the gateway cannot replay
	pinSetConfig       pinReason = "set_config"              // set_config() may change the session
	pinTemp            pinReason = "temp-object"             // CREATE TEMP …, SELECT … INTO TEMP, pg_temp
	pinAdvisoryLock    pinReason = "advisory-lock"           // session-level advisory locks
	pinPrepare         pinReason = "sql-prepare"             // SQL PREPARE
	pinDeallocate      pinReason = "deallocate"              // DEALLOCATE of a statement the client did not prepare here
	pinCursorWithHold  pinReason = "cursor-with-hold"        // DECLARE … WITH HOLD
	pinListen          pinReason = "listen"                  // LISTEN: notifications must reach this client
	pinLoad            pinReason = "load"                    // LOAD: a library cannot be unloaded
	pinDoBlock         pinReason = "do-block"                // DO whose body may change the session
	pinDiscard         pinReason = "discard"                 // DISCARD ALL through the extended protocol
	pinReportedSetting pinReason = "server-reported-setting" // the server reported a setting change the gateway did not make
)

// pinReasons lists every reason, for metrics that show zeros too.
var pinReasons = []pinReason{pinSet, pinSetConfig, pinTemp, pinAdvisoryLock, pinPrepare, pinDeallocate,
	pinCursorWithHold, pinListen, pinLoad, pinDoBlock, pinDiscard, pinReportedSetting}

// what names the statement class for a refusal message.
func (r pinReason) what() string {
	switch r {
	case pinSet:
		return "this form of SET or RESET"
	case pinSetConfig:
		return "set_config()"
	case pinTemp:
		return "temporary objects"
	case pinAdvisoryLock:
		return "session-level advisory locks"
	case pinPrepare:
		return "SQL PREPARE"
	case pinDeallocate:
		return "DEALLOCATE of this statement"
	case pinCursorWithHold:
		return "cursors WITH HOLD"
	case pinListen:
		return "LISTEN"
	case pinLoad:
		return "LOAD"
	case pinDoBlock:
		return "a DO block that may change session state"
	case pinDiscard:
		return "DISCARD ALL through the extended protocol"
	}
	return string(r)
}

// txEnd is how a statement ends a transaction block.
type txEnd uint8

const (
	txEndNone txEnd = iota
	txEndCommit
	txEndRollback
)

// setCommand is a SET or RESET the gateway replays on other backends.
type setCommand struct {
	name       string // lower case; "" for RESET ALL and DISCARD ALL
	statement  string // the client's statement without surrounding comments
	reset      bool
	resetAll   bool // RESET ALL: back to the start-up values
	discardAll bool // DISCARD ALL: start-up values, and no statements
	seq        int  // the batch it is in
}

// queryEffects is what one Query or Parse does to the session.
type queryEffects struct {
	pin pinReason // "" when nothing pins
	// set is the tracked SET/RESET/DISCARD ALL when the query is exactly
	// that one statement.
	set        *setCommand
	deallocAll bool // DEALLOCATE ALL or DISCARD ALL: the server drops every statement
	// deallocs are DEALLOCATE name statements, to be renamed to the
	// server's names.
	deallocs  []deallocRef
	end       txEnd // how the last statement ends a transaction block
	savepoint bool  // SAVEPOINT, ROLLBACK TO, RELEASE, or AND CHAIN
	prepareTx bool  // PREPARE TRANSACTION
}

// deallocRef is the name token of a DEALLOCATE statement.
type deallocRef struct {
	name       string
	start, end int
}

// isAdvisoryLock reports whether token i names a session-level advisory
// lock function; the _xact_ variants end with the transaction.
func isAdvisoryLock(st sqlStatement, i int) bool {
	return st.isWord(i, "pg_advisory_lock") || st.isWord(i, "pg_advisory_lock_shared") ||
		st.isWord(i, "pg_try_advisory_lock") || st.isWord(i, "pg_try_advisory_lock_shared")
}

// pinFor records the first reason found.
func (fx *queryEffects) pinFor(r pinReason) {
	if fx.pin == "" {
		fx.pin = r
	}
}

// analyzeQuery classifies a query string with sc's buffers. simple: a
// simple Query, where a SET that is its only statement can be carried;
// through the extended protocol, or among other statements, a SET pins.
func analyzeQuery(sc *sqlScanner, q string, simple bool) queryEffects {
	var fx queryEffects
	stmts := sc.split(q)
	for _, st := range stmts {
		fx.end = txEndNone
		analyzeStatement(st, simple && len(stmts) == 1, &fx)
	}
	return fx
}

func analyzeStatement(st sqlStatement, single bool, fx *queryEffects) {
	toks := st.tokens
	// Words anywhere in the statement that change the session whatever
	// the statement is: function calls and temp schemas.
	for i, t := range toks {
		if t.kind != tokWord {
			continue
		}
		call := st.isPunct(i+1, '(')
		switch {
		case call && st.isWord(i, "set_config"):
			fx.pinFor(pinSetConfig)
		case call && isAdvisoryLock(st, i):
			fx.pinFor(pinAdvisoryLock)
		case st.isWord(i, "pg_temp"):
			fx.pinFor(pinTemp)
		case st.isWord(i, "into") && (st.isWord(i+1, "temp") || st.isWord(i+1, "temporary")):
			fx.pinFor(pinTemp)
		}
	}
	if len(toks) == 0 || toks[0].kind != tokWord {
		return
	}
	var first [16]byte
	n := copy(first[:], st.raw(0))
	for j := 0; j < n; j++ {
		if 'A' <= first[j] && first[j] <= 'Z' {
			first[j] += 'a' - 'A'
		}
	}
	if len(st.raw(0)) > len(first) {
		return // no keyword of interest is that long
	}
	switch string(first[:n]) {
	case "set":
		analyzeSet(st, single, fx)
	case "reset":
		analyzeReset(st, single, fx)
	case "discard":
		if st.isWord(1, "all") {
			fx.deallocAll = true
			if single {
				fx.set = &setCommand{discardAll: true, statement: strings.Clone(st.text())}
			} else {
				fx.pinFor(pinDiscard)
			}
		}
	case "deallocate":
		i := 1
		if st.isWord(i, "prepare") {
			i++
		}
		switch {
		case st.isWord(i, "all") && i+1 == len(toks):
			fx.deallocAll = true
		case i < len(toks) && (toks[i].kind == tokWord || toks[i].kind == tokIdent):
			fx.deallocs = append(fx.deallocs, deallocRef{name: st.word(i), start: toks[i].start, end: toks[i].end})
		}
	case "prepare":
		if st.isWord(1, "transaction") {
			fx.prepareTx = true
		} else {
			fx.pinFor(pinPrepare)
		}
	case "declare":
		for i := range toks {
			if st.isWord(i, "with") && st.isWord(i+1, "hold") {
				fx.pinFor(pinCursorWithHold)
			}
		}
	case "listen":
		fx.pinFor(pinListen)
	case "load":
		fx.pinFor(pinLoad)
	case "create":
		for i := 1; i < len(toks) && toks[i].kind == tokWord; i++ {
			if st.isWord(i, "temp") || st.isWord(i, "temporary") {
				fx.pinFor(pinTemp)
				break
			}
			if !st.isWord(i, "global") && !st.isWord(i, "local") && !st.isWord(i, "or") && !st.isWord(i, "replace") && !st.isWord(i, "unlogged") {
				break
			}
		}
	case "do":
		if doBodyMayChangeSession(st) {
			fx.pinFor(pinDoBlock)
		}
	case "commit", "end":
		fx.end = txEndCommit
		if andChain(st) {
			fx.savepoint = true
		}
	case "rollback", "abort":
		if st.isWord(1, "to") {
			fx.savepoint = true
			return
		}
		fx.end = txEndRollback
		if andChain(st) {
			fx.savepoint = true
		}
	case "savepoint", "release":
		fx.savepoint = true
	}
}

// andChain reports COMMIT AND CHAIN or ROLLBACK AND CHAIN: the block goes
// on, which the gateway's tracking of SET in blocks does not follow.
func andChain(st sqlStatement) bool {
	for i := range st.tokens {
		if st.isWord(i, "chain") && !st.isWord(i-1, "no") {
			return true
		}
	}
	return false
}

// sessionWords are words that, inside a DO block's body, may change the
// session. A DO block runs code the gateway cannot follow, so its body is
// searched for them anywhere, string literals included (EXECUTE 'listen
// x' hides a LISTEN in a string).
var sessionWords = []string{"listen", "set", "reset", "set_config", "temp", "temporary", "pg_temp",
	"advisory_lock", "prepare", "load", "session", "role", "hold"}

func doBodyMayChangeSession(st sqlStatement) bool {
	for i, t := range st.tokens {
		if t.kind != tokString {
			continue
		}
		body := lowerASCII(st.contents(i))
		for _, w := range sessionWords {
			if containsWord(body, w) {
				return true
			}
		}
	}
	return false
}

// containsWord reports whether w occurs in s not as part of a longer
// identifier (so "offset" does not contain "set", but "pg_advisory_lock"
// contains "advisory_lock").
func containsWord(s, w string) bool {
	for i := 0; ; {
		k := strings.Index(s[i:], w)
		if k < 0 {
			return false
		}
		at := i + k
		after := at + len(w)
		beforeOK := at == 0 || !isIdentCont(s[at-1]) || s[at-1] == '_'
		afterOK := after == len(s) || !isIdentCont(s[after]) || s[after] == '_'
		if beforeOK && afterOK {
			return true
		}
		i = at + 1
	}
}

// analyzeSet handles SET. Carried: SET [SESSION] name {TO|=} value and
// SET [SESSION] TIME ZONE value, with name a plain identifier, as the only
// statement of a simple Query. SET LOCAL, SET TRANSACTION and SET
// CONSTRAINTS end with the transaction. Everything else pins.
func analyzeSet(st sqlStatement, single bool, fx *queryEffects) {
	toks := st.tokens
	i := 1
	if st.isWord(i, "local") || st.isWord(i, "transaction") || st.isWord(i, "constraints") {
		return
	}
	if st.isWord(i, "session") {
		i++
		if st.isWord(i, "characteristics") || st.isWord(i, "authorization") {
			fx.pinFor(pinSet)
			return
		}
	}
	if i >= len(toks) || toks[i].kind != tokWord {
		fx.pinFor(pinSet) // a quoted name, or nothing
		return
	}
	for _, w := range []string{"role", "names", "schema", "xml", "session", "authorization", "local", "transaction", "characteristics"} {
		if st.isWord(i, w) {
			fx.pinFor(pinSet)
			return
		}
	}
	next := i + 1
	name := ""
	if st.isWord(i, "time") {
		if !st.isWord(next, "zone") {
			fx.pinFor(pinSet)
			return
		}
		name, next = "timezone", next+1
	} else {
		name = st.word(i)
		// A qualified placeholder name: myapp.setting.
		for st.isPunct(next, '.') && next+1 < len(toks) && toks[next+1].kind == tokWord {
			name += "." + st.word(next+1)
			next += 2
		}
		if !st.isWord(next, "to") && !st.isPunct(next, '=') {
			fx.pinFor(pinSet)
			return
		}
	}
	if !single {
		fx.pinFor(pinSet)
		return
	}
	fx.set = &setCommand{name: name, statement: strings.Clone(st.text())}
}

// analyzeReset handles RESET name, RESET TIME ZONE and RESET ALL.
func analyzeReset(st sqlStatement, single bool, fx *queryEffects) {
	toks := st.tokens
	if !single {
		fx.pinFor(pinSet)
		return
	}
	switch {
	case len(toks) == 2 && st.isWord(1, "all"):
		fx.set = &setCommand{resetAll: true, statement: strings.Clone(st.text())}
	case len(toks) == 3 && st.isWord(1, "time") && st.isWord(2, "zone"):
		fx.set = &setCommand{name: "timezone", reset: true, statement: strings.Clone(st.text())}
	case len(toks) == 2 && toks[1].kind == tokWord && !st.isWord(1, "role") && !st.isWord(1, "session") && !st.isWord(1, "authorization"):
		fx.set = &setCommand{name: st.word(1), reset: true, statement: strings.Clone(st.text())}
	default:
		fx.pinFor(pinSet) // quoted or qualified names, RESET ROLE, RESET SESSION AUTHORIZATION
	}
}
