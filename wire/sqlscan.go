package wire

import "strings"

// A small SQL lexer, enough for transaction mode to see what a statement
// does to the session: it splits a query string into statements at
// top-level semicolons and reads each statement's words, skipping what
// PostgreSQL's own scanner (src/backend/parser/scan.l) treats as comments,
// string constants, quoted identifiers and dollar-quoted strings.
//
// Where the lexer and the server could disagree, the lexer errs towards
// seeing more statements and words than the server does, never fewer:
// plain '...' strings are read with standard_conforming_strings on (a
// backslash is an ordinary character), so a string the server would
// extend past a backslash-quote ends earlier here, and the text after it
// is examined as code.

// sqlToken is one lexical element of a statement.
type sqlToken struct {
	kind       tokenKind
	start, end int    // byte offsets in the query
	word       string // tokWord: lower-cased; tokIdent: as quoted; tokString: contents
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
	tokens     []sqlToken
	start, end int
}

// text is the statement as the client wrote it, without the comments
// before and after it, so it can be joined with others safely.
func (s sqlStatement) text(q string) string { return q[s.start:s.end] }

// isWord reports whether token i is the keyword w (lower case).
func (s sqlStatement) isWord(i int, w string) bool {
	return i < len(s.tokens) && s.tokens[i].kind == tokWord && s.tokens[i].word == w
}

// splitStatements lexes q into statements. Empty statements are dropped.
func splitStatements(q string) []sqlStatement {
	var stmts []sqlStatement
	var cur []sqlToken
	flush := func() {
		if len(cur) > 0 {
			stmts = append(stmts, sqlStatement{tokens: cur, start: cur[0].start, end: cur[len(cur)-1].end})
			cur = nil
		}
	}
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
			end, body := scanQuoted(q, i, '\'', false)
			cur = append(cur, sqlToken{kind: tokString, start: i, end: end, word: body})
			i = end
		case (c == 'e' || c == 'E') && i+1 < len(q) && q[i+1] == '\'':
			end, body := scanQuoted(q, i+1, '\'', true)
			cur = append(cur, sqlToken{kind: tokString, start: i, end: end, word: body})
			i = end
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N') && i+1 < len(q) && q[i+1] == '\'':
			end, body := scanQuoted(q, i+1, '\'', false)
			cur = append(cur, sqlToken{kind: tokString, start: i, end: end, word: body})
			i = end
		case (c == 'u' || c == 'U') && i+2 < len(q) && q[i+1] == '&' && (q[i+2] == '\'' || q[i+2] == '"'):
			quote := q[i+2]
			end, body := scanQuoted(q, i+2, quote, false)
			kind := tokString
			if quote == '"' {
				kind = tokIdent
			}
			cur = append(cur, sqlToken{kind: kind, start: i, end: end, word: body})
			i = end
		case c == '"':
			end, body := scanQuoted(q, i, '"', false)
			cur = append(cur, sqlToken{kind: tokIdent, start: i, end: end, word: body})
			i = end
		case c == '$' && i+1 < len(q) && isDigit(q[i+1]):
			j := i + 1
			for j < len(q) && isDigit(q[j]) {
				j++
			}
			cur = append(cur, sqlToken{kind: tokOther, start: i, end: j})
			i = j
		case c == '$':
			if end, body, ok := scanDollar(q, i); ok {
				cur = append(cur, sqlToken{kind: tokString, start: i, end: end, word: body})
				i = end
			} else {
				cur = append(cur, sqlToken{kind: tokOther, start: i, end: i + 1})
				i++
			}
		case isIdentStart(c):
			j := i + 1
			for j < len(q) && isIdentCont(q[j]) {
				j++
			}
			cur = append(cur, sqlToken{kind: tokWord, start: i, end: j, word: lowerASCII(q[i:j])})
			i = j
		default:
			cur = append(cur, sqlToken{kind: tokOther, start: i, end: i + 1, word: q[i : i+1]})
			i++
		}
	}
	flush()
	return stmts
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
// (the end of q when unterminated) and the contents.
func scanQuoted(q string, i int, quote byte, backslash bool) (int, string) {
	var b []byte
	j := i + 1
	for j < len(q) {
		c := q[j]
		switch {
		case backslash && c == '\\' && j+1 < len(q):
			b = append(b, q[j+1])
			j += 2
			continue
		case c == quote:
			if j+1 < len(q) && q[j+1] == quote {
				b = append(b, quote)
				j += 2
				continue
			}
			return j + 1, string(b)
		}
		b = append(b, c)
		j++
	}
	return len(q), string(b)
}

// scanDollar reads a dollar-quoted string $tag$...$tag$ starting at i.
func scanDollar(q string, i int) (end int, body string, ok bool) {
	j := i + 1
	for j < len(q) && q[j] != '$' {
		if !isIdentCont(q[j]) || (j == i+1 && isDigit(q[j])) {
			return 0, "", false
		}
		j++
	}
	if j >= len(q) {
		return 0, "", false
	}
	tag := q[i : j+1]
	rest := q[j+1:]
	k := strings.Index(rest, tag)
	if k < 0 {
		return len(q), rest, true
	}
	return j + 1 + k + len(tag), rest[:k], true
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
