package wire

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
	"strings"
)

// Message surgery for transaction mode: splitting the few client messages
// that name a prepared statement and writing them again under the
// backend's name. Slices returned alias the input.

// cBytes splits off a NUL-terminated string.
func cBytes(b []byte) ([]byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, false
	}
	return b[:i], true
}

// splitParse splits a Parse body: statement name, query, and the rest
// (parameter type count and OIDs).
func splitParse(body []byte) (name, query, rest []byte, ok bool) { return splitTwoStrings(body) }

// splitBind splits a Bind body: portal, statement, and the rest.
func splitBind(body []byte) (portal, stmt, rest []byte, ok bool) { return splitTwoStrings(body) }

func splitTwoStrings(body []byte) (a, b, rest []byte, ok bool) {
	i := bytes.IndexByte(body, 0)
	if i < 0 {
		return nil, nil, nil, false
	}
	j := bytes.IndexByte(body[i+1:], 0)
	if j < 0 {
		return nil, nil, nil, false
	}
	return body[:i], body[i+1 : i+1+j], body[i+2+j:], true
}

// startMessage appends a header with a length to fill in by endMessage.
func startMessage(out []byte, typ byte) ([]byte, int) {
	return append(out, typ, 0, 0, 0, 0), len(out)
}

func endMessage(out []byte, at int) []byte {
	binary.BigEndian.PutUint32(out[at+1:at+5], uint32(len(out)-at-1))
	return out
}

func appendRaw(out []byte, typ byte, body []byte) []byte {
	out, at := startMessage(out, typ)
	return endMessage(append(out, body...), at)
}

func appendParse[S string | []byte](out []byte, name string, query S, rest []byte) []byte {
	return appendTwoStrings(out, 'P', []byte(name), []byte(query), rest)
}

func appendBind(out []byte, portal []byte, stmt string, rest []byte) []byte {
	return appendTwoStrings(out, 'B', portal, []byte(stmt), rest)
}

// appendTwoStrings writes a message that starts with two NUL-terminated
// strings (Parse: name and query; Bind: portal and statement).
func appendTwoStrings(out []byte, typ byte, a, b, rest []byte) []byte {
	out, at := startMessage(out, typ)
	out = append(out, a...)
	out = append(out, 0)
	out = append(out, b...)
	out = append(out, 0)
	out = append(out, rest...)
	return endMessage(out, at)
}

// appendDescribe and appendClose write Describe or Close of a statement
// ('S'), which share a layout.
func appendDescribe(out []byte, stmt string) []byte { return appendStatementOp(out, 'D', stmt) }

func appendClose(out []byte, stmt string) []byte { return appendStatementOp(out, 'C', stmt) }

func appendStatementOp(out []byte, typ byte, stmt string) []byte {
	out, at := startMessage(out, typ)
	out = append(out, 'S')
	out = append(out, stmt...)
	out = append(out, 0)
	return endMessage(out, at)
}

func appendQuery(out []byte, sql string) []byte {
	out, at := startMessage(out, 'Q')
	out = append(out, sql...)
	out = append(out, 0)
	return endMessage(out, at)
}

// listenRefusal replaces a LISTEN in transaction mode. The server raises
// the error itself, so the client sees it exactly where LISTEN's answer
// would be, and an open transaction is aborted as any error aborts it.
const listenRefusal = `DO $querycop$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', ` +
	`MESSAGE = 'LISTEN is not supported in transaction pooling mode', ` +
	`HINT = 'A notification could arrive while another client holds this server connection. Connect through a gateway with GATEKEEPER_POOL_MODE=session to use LISTEN.'; END$querycop$`

// setCommand is a session-level SET or RESET that a client ran.
type setCommand struct {
	name      string // lower case
	statement string // the client's statement, run again on other backends
	reset     bool
	resetAll  bool
	seq       int
}

// sqlCommand is what transaction mode needs to know about a simple query.
type sqlCommand struct {
	listen bool
	set    *setCommand
}

// classify looks at a simple query for LISTEN (in any of its statements)
// and for a single session-level SET or RESET. Anything more complex (SET
// among other statements, SET LOCAL, SET inside a function) is left alone.
func classify(query []byte) sqlCommand {
	q := strings.TrimSpace(skipComments(string(query)))
	q = strings.TrimRight(q, "; \t\r\n")
	words := strings.Fields(q)
	if len(words) == 0 {
		return sqlCommand{}
	}
	if listens(q) {
		return sqlCommand{listen: true}
	}
	if strings.Contains(q, ";") {
		return sqlCommand{}
	}
	first := strings.ToLower(words[0])
	switch first {
	case "set":
		if len(words) < 2 {
			return sqlCommand{}
		}
		i := 1
		if strings.EqualFold(words[1], "session") {
			i = 2
		}
		if i >= len(words) {
			return sqlCommand{}
		}
		name := strings.ToLower(words[i])
		switch name {
		case "local", "transaction", "characteristics", "role", "authorization", "session":
			return sqlCommand{}
		case "time":
			name = "timezone"
		}
		if k := strings.IndexAny(name, "=("); k >= 0 {
			name = name[:k]
		}
		if name == "" {
			return sqlCommand{}
		}
		return sqlCommand{set: &setCommand{name: name, statement: q}}
	case "reset":
		if len(words) != 2 {
			return sqlCommand{}
		}
		name := strings.ToLower(words[1])
		if name == "all" {
			return sqlCommand{set: &setCommand{resetAll: true, statement: q}}
		}
		if name == "role" || name == "session" {
			return sqlCommand{}
		}
		return sqlCommand{set: &setCommand{name: name, reset: true, statement: q}}
	}
	return sqlCommand{}
}

// listens reports whether any statement of q starts with LISTEN. The split
// on ';' does not parse string literals, so a literal holding "; listen"
// is refused too: erring towards refusal keeps notifications from landing
// on another client's connection.
func listens(q string) bool {
	for _, stmt := range strings.Split(q, ";") {
		words := strings.Fields(skipComments(stmt))
		if len(words) > 0 && strings.EqualFold(words[0], "listen") {
			return true
		}
	}
	return false
}

// skipComments drops leading SQL comments.
func skipComments(q string) string {
	for {
		q = strings.TrimLeft(q, " \t\r\n")
		switch {
		case strings.HasPrefix(q, "--"):
			i := strings.IndexByte(q, '\n')
			if i < 0 {
				return ""
			}
			q = q[i+1:]
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q, "*/")
			if i < 0 {
				return ""
			}
			q = q[i+2:]
		default:
			return q
		}
	}
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

func cloneMap(m map[string]string) map[string]string { return maps.Clone(m) }

func lowerASCII(s string) string { return strings.ToLower(s) }
