package wire

import (
	"strconv"
	"strings"
)

// A small SQL lexer, enough for transaction mode to see what a statement
// does to the session: it splits a query string into statements at
// top-level semicolons and reads each statement's words, skipping what
// PostgreSQL's own scanner (src/backend/parser/scan.l) treats as comments,
// string constants, quoted identifiers and dollar-quoted strings.
//
// Plain '...' strings are read with standard_conforming_strings on (a
// backslash is an ordinary character) unless the scanner is told
// otherwise: a query with a backslash is read both ways by analyzeQuery,
// since with standard_conforming_strings off the server may see code
// where the first reading sees a string ('\'' ; SET ROLE x; SELECT '').

// sqlToken is one lexical element of a statement.
type sqlToken struct {
	kind       tokenKind
	start, end int // byte offsets in the query
}

type tokenKind uint8

const (
	tokWord   tokenKind = iota // keyword or unquoted identifier
	tokIdent                   // "quoted identifier"
	tokString                  // '...', E'...', $tag$...$tag$
	tokOther                   // numbers, operators, punctuation, parameters
)

// sqlStatement is one statement of a query string: its tokens, and the
// span from its first token to its last (comments around it excluded).
type sqlStatement struct {
	q          string
	tokens     []sqlToken
	start, end int
	// backslash: plain strings take backslash escapes
	// (standard_conforming_strings off).
	backslash bool
}

// text is the statement as the client wrote it, without the comments
// before and after it, so it can be joined with others safely.
func (s sqlStatement) text() string { return s.q[s.start:s.end] }

// raw is token i as written.
func (s sqlStatement) raw(i int) string { return s.q[s.tokens[i].start:s.tokens[i].end] }

// isWord reports whether token i is the keyword w (lower case).
func (s sqlStatement) isWord(i int, w string) bool {
	return i >= 0 && i < len(s.tokens) && s.tokens[i].kind == tokWord && equalFoldASCII(s.raw(i), w)
}

// isPunct reports whether token i is the single character c.
func (s sqlStatement) isPunct(i int, c byte) bool {
	return i < len(s.tokens) && s.tokens[i].kind == tokOther && s.tokens[i].end-s.tokens[i].start == 1 && s.q[s.tokens[i].start] == c
}

// isName reports whether token i names w (lower case): the keyword or
// unquoted identifier in any case, or a quoted identifier spelling it
// exactly ("set_config", U&"set\005fconfig").
func (s sqlStatement) isName(i int, w string) bool {
	if i < 0 || i >= len(s.tokens) {
		return false
	}
	switch s.tokens[i].kind {
	case tokWord:
		return equalFoldASCII(s.raw(i), w)
	case tokIdent:
		return s.identName(i) == w
	}
	return false
}

// identName is the name a quoted identifier token stands for, with the
// escapes of a U&"..." identifier (and its UESCAPE clause) decoded.
func (s sqlStatement) identName(i int) string {
	name := s.contents(i)
	raw := s.raw(i)
	if raw[0] != 'u' && raw[0] != 'U' {
		return name
	}
	esc := byte('\\')
	if s.isWord(i+1, "uescape") && i+2 < len(s.tokens) && s.tokens[i+2].kind == tokString {
		if e := s.contents(i + 2); len(e) == 1 {
			esc = e[0]
		}
	}
	return decodeUnicodeEscapes(name, esc)
}

// decodeUnicodeEscapes decodes the escapes of a U& literal: esc esc,
// esc and four hex digits, esc + and six hex digits. A malformed escape is
// kept as written (the server refuses it anyway).
func decodeUnicodeEscapes(s string, esc byte) string {
	if strings.IndexByte(s, esc) < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != esc {
			b.WriteByte(s[i])
			continue
		}
		rest := s[i+1:]
		n := 4
		if strings.HasPrefix(rest, "+") {
			rest, n = rest[1:], 6
		}
		switch {
		case strings.HasPrefix(s[i+1:], string(esc)):
			b.WriteByte(esc)
			i++
		case len(rest) >= n:
			if r, err := strconv.ParseUint(rest[:n], 16, 32); err == nil {
				b.WriteRune(rune(r))
				i += len(s[i+1:]) - len(rest) + n
				continue
			}
			b.WriteByte(esc)
		default:
			b.WriteByte(esc)
		}
	}
	return b.String()
}

// word is token i folded as PostgreSQL folds an unquoted identifier (ASCII
// only), or a quoted identifier's name; a new string, safe to keep.
func (s sqlStatement) word(i int) string {
	t := s.tokens[i]
	if t.kind == tokIdent {
		return s.contents(i)
	}
	return strings.ToLower(strings.Clone(s.raw(i)))
}

// contents is the value of a string constant or quoted identifier token.
func (s sqlStatement) contents(i int) string {
	t := s.tokens[i]
	lit := s.q[t.start:t.end]
	backslash := false
	switch {
	case strings.HasPrefix(lit, "$"):
		tag := lit[:strings.IndexByte(lit[1:], '$')+2]
		body := strings.TrimPrefix(lit, tag)
		return strings.TrimSuffix(body, tag)
	case lit[0] == 'e' || lit[0] == 'E':
		backslash, lit = true, lit[1:]
	case lit[0] == 'u' || lit[0] == 'U':
		lit = lit[2:]
	case lit[0] != '\'' && lit[0] != '"':
		lit = lit[1:] // B'', X'', N''
	}
	if lit[0] == '\'' && s.backslash {
		backslash = true
	}
	quote := lit[0]
	var b strings.Builder
	for j := 1; j < len(lit); j++ {
		c := lit[j]
		switch {
		case backslash && c == '\\' && j+1 < len(lit):
			j++
			b.WriteByte(lit[j])
			continue
		case c == quote:
			if j+1 < len(lit) && lit[j+1] == quote {
				j++
				b.WriteByte(quote)
				continue
			}
			return b.String()
		}
		b.WriteByte(c)
	}
	return b.String()
}

// sqlScanner splits query strings into statements, reusing its buffers so
// that the common query costs no allocation.
type sqlScanner struct {
	// backslash: read plain '...' strings as the server does with
	// standard_conforming_strings off, backslash escaping the next byte.
	backslash bool
	toks      []sqlToken
	stmts     []sqlStatement
	spans     [][2]int // token index ranges of the statements
}

// splitStatements lexes q into statements. Empty statements are dropped.
func splitStatements(q string) []sqlStatement {
	var sc sqlScanner
	return sc.split(q)
}

// split lexes q into statements, valid until the next call.
func (sc *sqlScanner) split(q string) []sqlStatement {
	sc.toks, sc.stmts, sc.spans = sc.toks[:0], sc.stmts[:0], sc.spans[:0]
	first := 0
	flush := func() {
		if len(sc.toks) > first {
			sc.spans = append(sc.spans, [2]int{first, len(sc.toks)})
			first = len(sc.toks)
		}
	}
	add := func(kind tokenKind, start, end int) { sc.toks = append(sc.toks, sqlToken{kind, start, end}) }
	i := 0
	for i < len(q) {
		c := q[i]
		switch {
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' && q[i] != '\r' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			i = skipBlockComment(q, i)
		case c == ';':
			flush()
			i++
		case c == '\'':
			end := scanQuoted(q, i, '\'', sc.backslash)
			add(tokString, i, end)
			i = end
		case (c == 'e' || c == 'E') && i+1 < len(q) && q[i+1] == '\'':
			end := scanQuoted(q, i+1, '\'', true)
			add(tokString, i, end)
			i = end
		case (c == 'n' || c == 'N') && i+1 < len(q) && q[i+1] == '\'':
			end := scanQuoted(q, i+1, '\'', sc.backslash)
			add(tokString, i, end)
			i = end
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && i+1 < len(q) && q[i+1] == '\'':
			end := scanQuoted(q, i+1, '\'', false)
			add(tokString, i, end)
			i = end
		case (c == 'u' || c == 'U') && i+2 < len(q) && q[i+1] == '&' && (q[i+2] == '\'' || q[i+2] == '"'):
			kind := tokString
			if q[i+2] == '"' {
				kind = tokIdent
			}
			end := scanQuoted(q, i+2, q[i+2], false)
			add(kind, i, end)
			i = end
		case c == '"':
			end := scanQuoted(q, i, '"', false)
			add(tokIdent, i, end)
			i = end
		case c == '$' && i+1 < len(q) && isDigit(q[i+1]):
			j := i + 1
			for j < len(q) && isDigit(q[j]) {
				j++
			}
			add(tokOther, i, j)
			i = j
		case c == '$':
			if end, ok := scanDollar(q, i); ok {
				add(tokString, i, end)
				i = end
			} else {
				add(tokOther, i, i+1)
				i++
			}
		case isIdentStart(c):
			j := i + 1
			for j < len(q) && isIdentCont(q[j]) {
				j++
			}
			add(tokWord, i, j)
			i = j
		default:
			add(tokOther, i, i+1)
			i++
		}
	}
	flush()
	for _, sp := range sc.spans {
		toks := sc.toks[sp[0]:sp[1]:sp[1]]
		sc.stmts = append(sc.stmts, sqlStatement{q: q, tokens: toks, start: toks[0].start, end: toks[len(toks)-1].end, backslash: sc.backslash})
	}
	return sc.stmts
}

// skipBlockComment returns the offset after the comment starting at i.
// Block comments nest in PostgreSQL; an unterminated one runs to the end.
func skipBlockComment(q string, i int) int {
	depth := 0
	for i < len(q) {
		switch {
		case q[i] == '/' && i+1 < len(q) && q[i+1] == '*':
			depth++
			i += 2
		case q[i] == '*' && i+1 < len(q) && q[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(q)
}

// scanQuoted reads a quoted string or identifier starting at the quote
// q[i]: a doubled quote is a quote, and in E” strings a backslash
// escapes the next byte. It returns the offset after the closing quote
// (the end of q when unterminated).
func scanQuoted(q string, i int, quote byte, backslash bool) int {
	for j := i + 1; j < len(q); j++ {
		c := q[j]
		switch {
		case backslash && c == '\\':
			j++
		case c == quote:
			if j+1 < len(q) && q[j+1] == quote {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(q)
}

// scanDollar reads a dollar-quoted string $tag$...$tag$ starting at i.
func scanDollar(q string, i int) (end int, ok bool) {
	j := i + 1
	for j < len(q) && q[j] != '$' {
		if !isIdentCont(q[j]) || (j == i+1 && isDigit(q[j])) {
			return 0, false
		}
		j++
	}
	if j >= len(q) {
		return 0, false
	}
	tag := q[i : j+1]
	k := strings.Index(q[j+1:], tag)
	if k < 0 {
		return len(q), true
	}
	return j + 1 + k + len(tag), true
}

// equalFoldASCII compares s with the lower-case ASCII word w, ignoring the
// case of s's ASCII letters, as PostgreSQL folds keywords.
func equalFoldASCII(s, w string) bool {
	if len(s) != len(w) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[i] {
			return false
		}
	}
	return true
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isIdentStart and isIdentCont follow scan.l's ident_start and ident_cont:
// bytes of multi-byte characters count as letters.
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }
