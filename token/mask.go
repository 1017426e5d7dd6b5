package token

import (
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxReason bounds the part of a failure's text that comes from the
// command's own output: enough for az's "ERROR: AADSTS700082: The refresh
// token has expired due to inactivity. …" and a script's "path: line N:
// …", short enough for a client's FATAL and one log line.
const maxReason = 300

const guid = `[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}`

var (
	// jwtShape is a JWT, whole or cut short: its header is base64url JSON,
	// so it starts with "eyJ".
	jwtShape = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}`)
	// opaqueRun is a run of the characters of base64, base64url, hex and
	// percent-encoding: the stuff tokens and signatures are made of.
	opaqueRun = regexp.MustCompile(`[A-Za-z0-9+/=_%-]+`)
	// A run that is exactly a GUID (Entra's trace and correlation IDs,
	// tenant and client IDs) is kept: operators quote it to support, and
	// it is no secret.
	guidOnly = regexp.MustCompile(`^` + guid + `$`)
	hexRun   = regexp.MustCompile(`[0-9A-Fa-f]{32,}`)
	// errorCode is an Entra ID error code, the one thing an operator
	// searches for; kept even when the line is cut.
	errorCode = regexp.MustCompile(`AADSTS[0-9]+`)
)

// Thresholds for masking opaque runs: any run this long, or a shorter one
// that mixes letters and digits, is taken for a secret. Paths and words
// are split by '.', ' ' and the like, so they rarely come near.
const (
	opaqueAlways = 64
	opaqueMixed  = 32
	minStdoutLen = 4
)

// safeLine turns what the command wrote into a bounded, single line that
// can be shown to a client, logged and served by the admin API. From line
// it masks every piece of stdout (each line and each whitespace-separated
// field of at least minStdoutLen bytes: the token, or part of a failed
// command's output), anything shaped like a JWT, and long opaque
// base64/hex runs; it then replaces control characters and invalid UTF-8,
// and cuts the line at maxReason bytes, keeping an AADSTS code that the cut
// would lose.
func safeLine(line, stdout string) string {
	line = maskStdout(line, stdout)
	line = jwtShape.ReplaceAllStringFunc(line, func(m string) string {
		if len(m) < 10 {
			return m
		}
		return redacted
	})
	line = opaqueRun.ReplaceAllStringFunc(line, func(m string) string {
		if guidOnly.MatchString(m) {
			return m
		}
		if len(m) >= opaqueAlways || (len(m) >= opaqueMixed && hasLetterAndDigit(m)) {
			return redacted
		}
		return hexRun.ReplaceAllLiteralString(m, redacted)
	})
	line = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(line, "\uFFFD"))
	line = strings.TrimSpace(line)
	if len(line) <= maxReason {
		return line
	}
	cut := maxReason
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut--
	}
	out := strings.TrimSpace(line[:cut]) + "…"
	if code := errorCode.FindString(line); code != "" && !strings.Contains(out, code) {
		out += " (" + code + ")"
	}
	return out
}

// maskStdout replaces in line every line and every field of stdout that is
// at least minStdoutLen bytes long, longest first, so that a piece of a
// longer one is not left behind.
func maskStdout(line, stdout string) string {
	if stdout == "" || line == "" {
		return line
	}
	seen := map[string]bool{}
	var pieces []string
	add := func(p string) {
		if len(p) >= minStdoutLen && !seen[p] {
			seen[p] = true
			pieces = append(pieces, p)
		}
	}
	for l := range strings.Lines(stdout) {
		l = strings.TrimSpace(l)
		add(l)
		for _, f := range strings.Fields(l) {
			add(f)
		}
	}
	// Longest first: masking a field first would leave the rest of the
	// line it belongs to.
	slices.SortFunc(pieces, func(a, b string) int { return len(b) - len(a) })
	for _, p := range pieces {
		if !strings.Contains(redacted, p) && strings.Contains(line, p) {
			line = strings.ReplaceAll(line, p, redacted)
		}
	}
	return line
}

func hasLetterAndDigit(s string) bool {
	var letter, digit bool
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
			letter = true
		}
	}
	return letter && digit
}
