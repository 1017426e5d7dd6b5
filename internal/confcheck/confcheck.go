// Package confcheck is the one shape of a configuration problem: every
// package's Validate returns them joined, and cmd prints them one per line.
// It depends on the standard library only, so any package may use it.
package confcheck

import (
	"fmt"
	"reflect"
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

// Var is the environment variable that sets the field at path (a field
// name, or names joined with dots through nested structs) of cfg, a
// package's Config, read under prefix: the name comes from the same env
// and envPrefix tags the configuration is parsed with, so a problem names
// exactly the variable the user sets. It panics on a path that does not
// exist, which any test of the package finds at once.
func Var(cfg any, prefix, path string) string {
	t := reflect.TypeOf(cfg)
	name := prefix
	for _, field := range strings.Split(path, ".") {
		f, ok := t.FieldByName(field)
		if !ok {
			panic(fmt.Sprintf("confcheck: %s has no field %s", t, field))
		}
		if p := f.Tag.Get("envPrefix"); p != "" {
			name += p
			t = f.Type
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if tag == "" {
			panic(fmt.Sprintf("confcheck: field %s of %s has no env tag", field, t))
		}
		return name + tag
	}
	panic(fmt.Sprintf("confcheck: %s leads to a struct, not a variable", path))
}
