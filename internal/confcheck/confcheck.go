// Package confcheck is the one shape of a configuration problem: every
// package's Validate returns them joined, and cmd prints them one per line.
// It depends on the standard library only, so any package may use it.
package confcheck

import (
	"fmt"
	"strings"
)

// Problem is one configuration mistake: a message that names the variables
// and says how to fix it.
type Problem struct {
	Vars []string
	Msg  string
}

func (p Problem) Error() string { return p.Msg }

// EnvVars lists the environment variables the problem concerns, so a
// caller can drop follow-on complaints about a variable that did not parse.
func (p Problem) EnvVars() []string { return p.Vars }

// New is a Problem about vars.
func New(msg string, vars ...string) Problem { return Problem{Vars: vars, Msg: msg} }

// OneOf sets *dst to text if it is one of allowed, for the UnmarshalText of
// a setting with a closed set of values; what names the setting's kind in
// the error ("pool mode").
func OneOf[T ~string](dst *T, text []byte, what string, allowed ...T) error {
	for _, v := range allowed {
		if string(text) == string(v) {
			*dst = v
			return nil
		}
	}
	want := make([]string, len(allowed))
	for i, v := range allowed {
		want[i] = string(v)
	}
	return fmt.Errorf("unknown %s %q (want one of %s)", what, text, strings.Join(want, ", "))
}
