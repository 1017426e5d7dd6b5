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
	pinFunctionCall    pinReason = "function-call"           // a fast-path FunctionCall, which may change the session
)

// pinReasons lists every reason, for metrics that show zeros too.
var pinReasons = []pinReason{pinSet, pinSetConfig, pinTemp, pinAdvisoryLock, pinPrepare, pinDeallocate,
	pinCursorWithHold, pinListen, pinLoad, pinDoBlock, pinDiscard, pinReportedSetting, pinFunctionCall}

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
	case pinFunctionCall:
		return "a fast-path function call"
	}
	return string(r)
}

// txEnd is how a statement ends a transaction block.
type txEnd uint8

const (
	txEndNone txEnd = iota
	txEndCommit
	txEndRollback
	// txEndUnknown: a query that ends a block before its last statement
	// (COMMIT; SELECT 1), or a batch that ends one more than once: which
	// way the SETs of the block went cannot be told from the text.
	txEndUnknown
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
	// listen: LISTEN, or a DO block that mentions it: notifications may
	// be the client's from now on.
	listen bool
}

// deallocRef is the name token of a DEALLOCATE statement.
type deallocRef struct {
	name       string
	start, end int
}

// isAdvisoryLock reports whether token i names a session-level advisory
// lock function; the _xact_ variants end with the transaction.
func isAdvisoryLock(st sqlStatement, i int) bool {
	return st.isName(i, "pg_advisory_lock") || st.isName(i, "pg_advisory_lock_shared") ||
		st.isName(i, "pg_try_advisory_lock") || st.isName(i, "pg_try_advisory_lock_shared")
}

// isTempSchema reports whether token i names the session's temporary
// schema: pg_temp, or its real name pg_temp_N.
func isTempSchema(st sqlStatement, i int) bool {
	if st.isName(i, "pg_temp") {
		return true
	}
	switch st.tokens[i].kind {
	case tokWord:
		// Every word of every statement comes here: compared in place,
		// as lowering it would allocate.
		raw := st.raw(i)
		return len(raw) >= len("pg_temp_") && strings.EqualFold(raw[:len("pg_temp_")], "pg_temp_")
	case tokIdent:
		return strings.HasPrefix(st.contents(i), "pg_temp_")
	}
	return false
}

// createsTemp reports whether the CREATE at token i makes a temporary
// object: CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY, whether the statement
// starts with it or runs it (EXPLAIN ANALYZE CREATE TEMP TABLE ... AS).
func createsTemp(st sqlStatement, i int) bool {
	for i++; i < len(st.tokens) && st.tokens[i].kind == tokWord; i++ {
		if st.isWord(i, "temp") || st.isWord(i, "temporary") {
			return true
		}
		if !st.isWord(i, "global") && !st.isWord(i, "local") && !st.isWord(i, "or") && !st.isWord(i, "replace") && !st.isWord(i, "unlogged") {
			return false
		}
	}
	return false
}

// hasWord reports whether the statement has the keyword w anywhere.
func hasWord(st sqlStatement, w string) bool {
	for i := range st.tokens {
		if st.isWord(i, w) {
			return true
		}
	}
	return false
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
	fx := analyzeQueryAs(sc, q, simple, false)
	if strings.IndexByte(q, '\\') < 0 {
		return fx
	}
	// With standard_conforming_strings off (a start-up option, a role's
	// setting, a SET), a backslash escapes a quote in a plain string and
	// the server may see code where the first reading saw a string. Read
	// it that way too; where the readings disagree, pin.
	alt := analyzeQueryAs(sc, q, simple, true)
	if alt.pin != "" {
		fx.pinFor(alt.pin)
	}
	if !sameEffects(fx, alt) {
		fx.pinFor(pinSet)
	}
	return fx
}

// sameEffects reports whether two readings of a query do the same.
func sameEffects(a, b queryEffects) bool {
	if (a.set == nil) != (b.set == nil) || a.set != nil && *a.set != *b.set {
		return false
	}
	if a.deallocAll != b.deallocAll || len(a.deallocs) != len(b.deallocs) || a.end != b.end ||
		a.savepoint != b.savepoint || a.prepareTx != b.prepareTx {
		return false
	}
	for i := range a.deallocs {
		if a.deallocs[i] != b.deallocs[i] {
			return false
		}
	}
	return true
}

// analyzeQueryAs reads q with plain strings taking backslash escapes or
// not.
func analyzeQueryAs(sc *sqlScanner, q string, simple, backslash bool) queryEffects {
	var fx queryEffects
	sc.backslash = backslash
	stmts := sc.split(q)
	sc.backslash = false
	endsInside := false
	for i, st := range stmts {
		fx.end = txEndNone
		analyzeStatement(st, simple && len(stmts) == 1, &fx)
		if fx.end != txEndNone && i < len(stmts)-1 {
			endsInside = true
		}
	}
	if endsInside {
		fx.end = txEndUnknown
	}
	return fx
}

func analyzeStatement(st sqlStatement, single bool, fx *queryEffects) {
	toks := st.tokens
	// Names anywhere in the statement that change the session whatever
	// the statement is: function calls (quoted names too: "set_config"
	// is the same function), temp schemas, CREATE TEMP under EXPLAIN
	// ANALYZE, and UPDATE of pg_settings, which calls set_config.
	for i, t := range toks {
		if t.kind != tokWord && t.kind != tokIdent {
			continue
		}
		next := i + 1
		if t.kind == tokIdent && st.isWord(next, "uescape") {
			next += 2 // U&"..." UESCAPE '!'
		}
		call := st.isPunct(next, '(')
		switch {
		case call && st.isName(i, "set_config"):
			fx.pinFor(pinSetConfig)
		case call && isAdvisoryLock(st, i):
			fx.pinFor(pinAdvisoryLock)
		case isTempSchema(st, i):
			fx.pinFor(pinTemp)
		case st.isWord(i, "into") && (st.isWord(i+1, "temp") || st.isWord(i+1, "temporary")):
			fx.pinFor(pinTemp)
		case st.isWord(i, "create") && createsTemp(st, i):
			fx.pinFor(pinTemp)
		case st.isName(i, "pg_settings") && hasWord(st, "update"):
			fx.pinFor(pinSetConfig)
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
		fx.listen = true
	case "load":
		fx.pinFor(pinLoad)
	case "do":
		if doBodyMayChangeSession(st) {
			fx.pinFor(pinDoBlock)
			fx.listen = fx.listen || doBodyMentions(st, "listen")
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
	for _, w := range sessionWords {
		if doBodyMentions(st, w) {
			return true
		}
	}
	return false
}

// doBodyMentions reports whether a string of the DO statement (its body)
// contains the word w.
func doBodyMentions(st sqlStatement, w string) bool {
	for i, t := range st.tokens {
		if t.kind == tokString && containsWord(lowerASCII(st.contents(i)), w) {
			return true
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
		if next+1 == len(toks) && (st.isWord(next, "default") || st.isWord(next, "local")) && single {
			// SET TIME ZONE DEFAULT|LOCAL is RESET TIME ZONE.
			fx.set = &setCommand{name: name, reset: true, statement: strings.Clone(st.text())}
			return
		}
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
		if next+2 == len(toks) && st.isWord(next+1, "default") && single {
			// SET name TO DEFAULT is RESET name: back to the client's
			// start-up value, which the backend does not know.
			fx.set = &setCommand{name: name, reset: true, statement: strings.Clone(st.text())}
			return
		}
	}
	if !single {
		fx.pinFor(pinSet)
		return
	}
	for j := next; j < len(toks); j++ {
		if toks[j].kind != tokString && toks[j].kind != tokIdent {
			continue
		}
		lit := st.raw(j)
		switch {
		case strings.Contains(lowerASCII(st.contents(j)), "pg_temp"):
			// search_path = 'pg_temp': CREATE TABLE then makes temporary
			// tables without saying so.
			fx.pinFor(pinTemp)
			return
		case strings.IndexByte(lit, '\\') >= 0 && (lit[0] == '\'' || lit[0] == 'n' || lit[0] == 'N'):
			// What a backslash means here depends on
			// standard_conforming_strings when the SET is replayed.
			fx.pinFor(pinSet)
			return
		}
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

// unsafeClientEncoding reports the client encodings whose multi-byte
// characters may end in a byte that is a backslash in ASCII (SJIS, BIG5,
// GBK, UHC, GB18030, JOHAB: PostgreSQL allows them only as client
// encodings for this reason). The server converts such text before it
// reads it; the gateway's lexer, reading bytes, would take the end of a
// character for an escape in E'...' and see a string where the server sees
// code, so a client using one is pinned. Spellings are PostgreSQL's
// aliases, compared as the server does: case and punctuation ignored.
func unsafeClientEncoding(name string) bool {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'a' <= c && c <= 'z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
		}
	}
	switch b.String() {
	case "sjis", "shiftjis", "mskanji", "win932", "windows932", "shiftjis2004",
		"big5", "win950", "windows950", "gbk", "win936", "windows936", "cp936",
		"uhc", "win949", "windows949", "johab", "gb18030":
		return true
	}
	return false
}
