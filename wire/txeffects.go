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

// advisoryLockFuncs are the session-level advisory lock functions; the
// _xact_ variants end with the transaction and need nothing.
var advisoryLockFuncs = map[string]bool{
	"pg_advisory_lock": true, "pg_advisory_lock_shared": true,
	"pg_try_advisory_lock": true, "pg_try_advisory_lock_shared": true,
}

// analyzeQuery classifies a query string. single reports whether a
// tracked SET may be carried (a simple Query of one statement); through
// the extended protocol, or among other statements, a SET pins.
func analyzeQuery(q string, simple bool) queryEffects {
	var fx queryEffects
	stmts := splitStatements(q)
	pin := func(r pinReason) {
		if fx.pin == "" {
			fx.pin = r
		}
	}
	for _, st := range stmts {
		fx.end = txEndNone
		analyzeStatement(q, st, simple && len(stmts) == 1, &fx, pin)
	}
	return fx
}

func analyzeStatement(q string, st sqlStatement, single bool, fx *queryEffects, pin func(pinReason)) {
	toks := st.tokens
	// Words anywhere in the statement that change the session whatever
	// the statement is: function calls and temp schemas.
	for i, t := range toks {
		if t.kind != tokWord {
			continue
		}
		call := i+1 < len(toks) && toks[i+1].kind == tokOther && toks[i+1].word == "("
		switch {
		case t.word == "set_config" && call:
			pin(pinSetConfig)
		case advisoryLockFuncs[t.word] && call:
			pin(pinAdvisoryLock)
		case t.word == "pg_temp":
			pin(pinTemp)
		case t.word == "into" && (st.isWord(i+1, "temp") || st.isWord(i+1, "temporary")):
			pin(pinTemp)
		}
	}
	if len(toks) == 0 || toks[0].kind != tokWord {
		return
	}
	switch toks[0].word {
	case "set":
		analyzeSet(q, st, single, fx, pin)
	case "reset":
		analyzeReset(q, st, single, fx, pin)
	case "discard":
		if st.isWord(1, "all") {
			fx.deallocAll = true
			if single {
				fx.set = &setCommand{discardAll: true, statement: st.text(q)}
			} else {
				pin(pinDiscard)
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
			fx.deallocs = append(fx.deallocs, deallocRef{name: toks[i].word, start: toks[i].start, end: toks[i].end})
		}
	case "prepare":
		if st.isWord(1, "transaction") {
			fx.prepareTx = true
		} else {
			pin(pinPrepare)
		}
	case "declare":
		for i := range toks {
			if st.isWord(i, "with") && st.isWord(i+1, "hold") {
				pin(pinCursorWithHold)
			}
		}
	case "listen":
		pin(pinListen)
	case "load":
		pin(pinLoad)
	case "create":
		for i := 1; i < len(toks) && toks[i].kind == tokWord; i++ {
			if w := toks[i].word; w == "temp" || w == "temporary" {
				pin(pinTemp)
				break
			}
			if w := toks[i].word; w != "global" && w != "local" && w != "or" && w != "replace" && w != "unlogged" {
				break
			}
		}
	case "do":
		if doBodyMayChangeSession(st) {
			pin(pinDoBlock)
		}
	case "commit", "end":
		fx.end = txEndCommit
		for i := range toks {
			if st.isWord(i, "chain") && !st.isWord(i-1, "no") {
				fx.savepoint = true
			}
		}
	case "rollback", "abort":
		if st.isWord(1, "to") {
			fx.savepoint = true
			return
		}
		fx.end = txEndRollback
		for i := range toks {
			if st.isWord(i, "chain") && !st.isWord(i-1, "no") {
				fx.savepoint = true
			}
		}
	case "savepoint", "release":
		fx.savepoint = true
	}
}

// sessionWords are words that, inside a DO block's body, may change the
// session. A DO block runs code the gateway cannot follow, so its body is
// searched for them anywhere, string literals included (EXECUTE 'listen
// x' hides a LISTEN in a string).
var sessionWords = []string{"listen", "set", "reset", "set_config", "temp", "temporary", "pg_temp",
	"advisory_lock", "prepare", "load", "session", "role", "hold"}

func doBodyMayChangeSession(st sqlStatement) bool {
	for _, t := range st.tokens[1:] {
		if t.kind != tokString {
			continue
		}
		body := lowerASCII(t.word)
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
func analyzeSet(q string, st sqlStatement, single bool, fx *queryEffects, pin func(pinReason)) {
	toks := st.tokens
	i := 1
	if st.isWord(i, "local") || st.isWord(i, "transaction") || st.isWord(i, "constraints") {
		return
	}
	if st.isWord(i, "session") {
		i++
		if st.isWord(i, "characteristics") || st.isWord(i, "authorization") {
			pin(pinSet)
			return
		}
	}
	if i >= len(toks) || toks[i].kind != tokWord {
		pin(pinSet) // a quoted name, or nothing
		return
	}
	name := toks[i].word
	next := i + 1
	switch name {
	case "role", "names", "schema", "xml", "session", "authorization", "local", "transaction", "characteristics":
		pin(pinSet)
		return
	case "time":
		if !st.isWord(next, "zone") {
			pin(pinSet)
			return
		}
		name, next = "timezone", next+1
	default:
		// A qualified placeholder name: myapp.setting.
		for next+1 < len(toks) && toks[next].kind == tokOther && toks[next].word == "." && toks[next+1].kind == tokWord {
			name += "." + toks[next+1].word
			next += 2
		}
		if next >= len(toks) || !(st.isWord(next, "to") || (toks[next].kind == tokOther && toks[next].word == "=")) {
			pin(pinSet)
			return
		}
	}
	if next+1 > len(toks) || !single {
		pin(pinSet)
		return
	}
	fx.set = &setCommand{name: name, statement: st.text(q)}
}

// analyzeReset handles RESET name, RESET TIME ZONE and RESET ALL.
func analyzeReset(q string, st sqlStatement, single bool, fx *queryEffects, pin func(pinReason)) {
	toks := st.tokens
	if !single {
		pin(pinSet)
		return
	}
	switch {
	case len(toks) == 2 && st.isWord(1, "all"):
		fx.set = &setCommand{resetAll: true, statement: st.text(q)}
	case len(toks) == 3 && st.isWord(1, "time") && st.isWord(2, "zone"):
		fx.set = &setCommand{name: "timezone", reset: true, statement: st.text(q)}
	case len(toks) == 2 && toks[1].kind == tokWord:
		switch toks[1].word {
		case "role", "session", "authorization":
			pin(pinSet)
		default:
			fx.set = &setCommand{name: toks[1].word, reset: true, statement: st.text(q)}
		}
	default:
		pin(pinSet) // quoted or qualified names, RESET SESSION AUTHORIZATION
	}
}
