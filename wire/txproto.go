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

// pinRefusal replaces a statement that would pin the client when
// GATEKEEPER_TX_PINNING=refuse. The server raises the error itself, so the
// client sees it exactly where the statement's answer would be, and an
// open transaction is aborted as any error aborts it.
func pinRefusal(r pinReason) string {
	msg := r.what() + " is not supported in transaction pooling mode with GATEKEEPER_TX_PINNING=refuse"
	hint := "Unset GATEKEEPER_TX_PINNING (or set it to pin) to keep such a client on one server connection until it disconnects, or connect through a gateway with GATEKEEPER_POOL_MODE=session."
	return `DO $querycop$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = ` +
		quoteLiteral(msg) + `, HINT = ` + quoteLiteral(hint) + `; END$querycop$`
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// quoteQualified quotes a setting name, part by part for a placeholder
// such as myapp.tenant.
func quoteQualified(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = quoteIdent(p)
	}
	return strings.Join(parts, ".")
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

func cloneMap(m map[string]string) map[string]string { return maps.Clone(m) }

func lowerASCII(s string) string { return strings.ToLower(s) }
