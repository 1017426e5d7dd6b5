package main

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/admin"
	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/confcheck"
	"github.com/querycop/querycop/internal/console"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// envPrefix is put before every variable except ADMIN_API_KEY.
const envPrefix = "GATEKEEPER_"

// LogConfig is how Querycop logs. Keys are read under GATEKEEPER_.
type LogConfig struct {
	Level  zerolog.Level `env:"LOG_LEVEL" envDefault:"info" help:"least severe level logged: trace, debug, info, warn or error"`
	Format string        `env:"LOG_FORMAT" envDefault:"json" help:"json or console"`
}

// Config is the whole configuration, each package's part nested under its
// prefix. Every top-level field is read under envPrefix plus its envPrefix
// tag, except AdminKey (see sections).
type Config struct {
	Backend  backend.Config `envPrefix:"BACKEND_"`
	Wire     wire.Config
	Pool     pool.Config
	Admin    admin.Config
	Console  console.Config
	AdminKey admin.KeyConfig // ADMIN_API_KEY, read without the prefix
	Log      LogConfig
	Shutdown ShutdownConfig
}

// ShutdownConfig paces the graceful stop on SIGTERM or SIGINT.
type ShutdownConfig struct {
	Timeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s" help:"after SIGTERM, how long running sessions may go on before they are closed with SQLSTATE 57P01"`
}

// Validate reports a shutdown timeout that is not positive.
func (c ShutdownConfig) Validate() error {
	if c.Timeout <= 0 {
		return confcheck.Problem{Vars: []string{envPrefix + "SHUTDOWN_TIMEOUT"},
			Msg: fmt.Sprintf("%sSHUTDOWN_TIMEOUT=%s must be positive; use a duration such as 30s", envPrefix, c.Timeout)}
	}
	return nil
}

// secretVars are never echoed: a value that failed to parse is described
// without it. The token command counts because it may embed a credential.
var secretVars = map[string]bool{
	"ADMIN_API_KEY":                true,
	"GATEKEEPER_BACKEND_TOKEN_CMD": true,
	"GATEKEEPER_AUTH_PASSWORD":     true,
}

// LoadConfig reads the configuration from environ (os.Environ() form,
// "K=V"; the first of duplicate keys wins, as with os.Getenv) and returns
// every problem at once: one error whose Unwrap() []error holds one error per
// problem, each naming the variable and saying how to fix it.
//
// caarlos0/env's `unset` option removes ADMIN_API_KEY from the process
// environment even though the values come from environ; main removes it
// itself as well, not relying on that.
func LoadConfig(environ []string) (Config, error) {
	vars := environMap(environ)
	var cfg Config
	var problems []error
	failed := map[string]bool{} // keys whose value did not parse

	for _, s := range sections(&cfg) {
		err := env.ParseWithOptions(s.ptr, env.Options{Prefix: s.prefix, Environment: vars})
		for _, e := range flatten(err) {
			key, msg := describeEnvError(e, s, vars)
			if key != "" {
				failed[key] = true
			}
			problems = append(problems, errors.New(msg))
		}
	}

	// Read once here; the checks below and the server share what was read.
	cfg.Wire.LoadAuthFile()
	semantic := []error{
		cfg.Backend.Validate(),
		cfg.Wire.Validate(),
		cfg.Pool.Validate(),
		cfg.Admin.Validate(),
		cfg.Console.Validate(),
		consoleModeCheck(cfg),
		cfg.Log.Validate(),
		cfg.Shutdown.Validate(),
		authFileModeCheck(cfg),
		authQueryModeCheck(cfg),
		portClash(cfg.Wire, cfg.Admin),
	}
	for _, p := range flatten(errors.Join(semantic...)) {
		// A variable that did not parse holds its zero value, so any rule
		// about it would only repeat the parse problem less clearly.
		if vp, ok := p.(interface{ EnvVars() []string }); ok && slices.ContainsFunc(vp.EnvVars(), func(k string) bool { return failed[k] }) {
			continue
		}
		problems = append(problems, p)
	}
	return cfg, errors.Join(problems...)
}

// Validate checks what caarlos0/env cannot: zerolog accepts fatal, panic,
// disabled and bare numbers, which would hide the WARN lines operators rely
// on (token command failures), so only the documented levels pass.
func (c LogConfig) Validate() error {
	var problems []error
	if c.Level < zerolog.TraceLevel || c.Level > zerolog.ErrorLevel {
		problems = append(problems, confcheck.Problem{Vars: []string{envPrefix + "LOG_LEVEL"},
			Msg: fmt.Sprintf("%sLOG_LEVEL=%q: %s", envPrefix, c.Level.String(), levelReason)})
	}
	if c.Format != "json" && c.Format != "console" {
		problems = append(problems, confcheck.Problem{Vars: []string{envPrefix + "LOG_FORMAT"},
			Msg: fmt.Sprintf("%sLOG_FORMAT=%q: not a log format; use json (for collectors) or console (for people)", envPrefix, c.Format)})
	}
	return errors.Join(problems...)
}

const levelReason = "not a log level; use trace, debug, info, warn or error"

// portClash catches the pool port and the admin API asking for the same
// socket, which would otherwise surface only as "address already in use"
// after start-up.
func portClash(w wire.Config, a admin.Config) error {
	// An invalid port is reported on its own; a clash would only repeat it.
	if w.ListenPort != a.Port || w.ListenPort < 1 || w.ListenPort > 65535 || !addrsOverlap(w.ListenAddr, a.Addr) {
		return nil
	}
	return confcheck.Problem{Vars: []string{envPrefix + "LISTEN_PORT", envPrefix + "API_PORT"},
		Msg: fmt.Sprintf("%sLISTEN_PORT and %sAPI_PORT are both %d on overlapping addresses (%s, %s); give the admin API another port",
			envPrefix, envPrefix, w.ListenPort, w.ListenAddr, a.Addr)}
}

func addrsOverlap(a, b string) bool {
	wildcard := func(s string) bool { return s == "" || s == "0.0.0.0" || s == "::" || s == "[::]" }
	return a == b || wildcard(a) || wildcard(b)
}

// section is one top-level part of Config and the prefix it is read under.
type section struct {
	ptr    any // pointer to the field inside the Config
	prefix string
	leaves []leaf
}

// sections splits cfg into its top-level parts. Each part is parsed on its
// own because env.ParseError carries only the Go field name, and names
// repeat across parts (backend.Config.Port, admin.Config.Port); inside one
// part they are unique (TestFieldNamesUniquePerSection), so the name finds
// the variable.
func sections(cfg *Config) []section {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	out := make([]section, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		prefix := envPrefix + f.Tag.Get("envPrefix")
		if f.Type == reflect.TypeFor[admin.KeyConfig]() {
			// The cookbooks name it ADMIN_API_KEY; keep that name.
			prefix = ""
		}
		out = append(out, section{ptr: v.Field(i).Addr().Interface(), prefix: prefix, leaves: leaves(f.Type, prefix)})
	}
	return out
}

// leaf is one variable: a field with an `env` tag.
type leaf struct {
	field  string // Go field name, as env.ParseError reports it
	key    string // full variable name
	def    string
	hasDef bool
	help   string
	typ    reflect.Type
}

// leaves walks t as caarlos0/env does: a struct field without an `env` tag
// is descended into under its envPrefix; a field with one is a variable.
func leaves(t reflect.Type, prefix string) []leaf {
	var out []leaf
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			if f.Type.Kind() == reflect.Struct {
				out = append(out, leaves(f.Type, prefix+f.Tag.Get("envPrefix"))...)
			}
			continue
		}
		def, hasDef := f.Tag.Lookup("envDefault")
		out = append(out, leaf{field: f.Name, key: prefix + name, def: def, hasDef: hasDef, help: f.Tag.Get("help"), typ: f.Type})
	}
	return out
}

// describeEnvError turns one caarlos0/env error into a problem line. It
// returns the variable's key when it could tell which one failed.
func describeEnvError(err error, s section, vars map[string]string) (key, msg string) {
	var pe env.ParseError
	var notSet env.VarIsNotSetError
	var empty env.EmptyVarError
	switch {
	case errors.As(err, &pe):
		i := slices.IndexFunc(s.leaves, func(l leaf) bool { return l.field == pe.Name })
		if i < 0 {
			return "", "field " + pe.Name + ": " + pe.Err.Error()
		}
		l := s.leaves[i]
		reason := parseReason(l.typ, pe.Err)
		if secretVars[l.key] {
			return l.key, l.key + " (value not shown): " + reason
		}
		return l.key, fmt.Sprintf("%s=%q: %s", l.key, vars[l.key], reason)
	case errors.As(err, &notSet):
		return notSet.Key, notSet.Key + " is not set; set it"
	case errors.As(err, &empty):
		return empty.Key, empty.Key + " is empty; give it a value"
	}
	return "", err.Error()
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	levelType    = reflect.TypeFor[zerolog.Level]()
	unmarshaler  = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// parseReason says why a value did not parse, in the operator's terms
// rather than strconv's.
func parseReason(t reflect.Type, err error) string {
	for t.Kind() == reflect.Pointer { // optional values, e.g. *time.Duration
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return "not a duration; write a number with a unit, e.g. 10s, 2m or 1m30s"
	case t == levelType:
		return levelReason
	case reflect.PointerTo(t).Implements(unmarshaler):
		return err.Error() // our own types word their errors for operators
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if errors.Is(err, strconv.ErrRange) {
			return "number out of range"
		}
		return "not a whole number"
	case reflect.Bool:
		return "not a boolean; use true or false"
	}
	return err.Error()
}

// environMap turns "K=V" entries into a map. The first entry of a key wins,
// as os.Getenv does with duplicates.
func environMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := m[k]; !dup {
			m[k] = v
		}
	}
	return m
}

// flatten lists the individual errors inside joined or aggregated errors.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// unknownVar is a GATEKEEPER_ variable Querycop does not read, with the
// closest known name when one is near.
type unknownVar struct {
	Name, Suggestion string
}

// unknownVars lists, sorted, the GATEKEEPER_ variables in environ that
// Querycop does not read: a typo in, say, the TLS mode's name would
// otherwise leave the default in force without a word.
func unknownVars(environ []string) []unknownVar {
	known := envVars()
	var out []unknownVar
	for k := range environMap(environ) {
		if !strings.HasPrefix(k, envPrefix) || slices.ContainsFunc(known, func(v envVar) bool { return v.Name == k }) {
			continue
		}
		u := unknownVar{Name: k}
		bestDist := 4 // farther than this is not a typo
		for _, v := range known {
			if d := editDistance(k, v.Name); d < bestDist {
				u.Suggestion, bestDist = v.Name, d
			}
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b unknownVar) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// authFileModeCheck refuses MD5 client auth file entries in pass-through
// mode: the gateway would check the client but could not log in for it.
func authFileModeCheck(cfg Config) error {
	if cfg.Wire.ClientAuthFile == "" || cfg.Backend.Token.TokenMode() {
		return nil
	}
	users, err := cfg.Wire.AuthFileMD5Users()
	if err != nil || len(users) == 0 {
		return nil // an unreadable file is reported by wire's own check
	}
	return confcheck.Problem{Vars: []string{envPrefix + "CLIENT_AUTH_FILE"}, Msg: fmt.Sprintf(
		"%sCLIENT_AUTH_FILE has MD5 entries for %s, but without %sBACKEND_TOKEN_CMD the gateway logs in to PostgreSQL for the client, which an MD5 hash does not let it do; use their SCRAM secrets from pg_authid (or plain-text passwords) instead, or token mode",
		envPrefix, strings.Join(users, ", "), envPrefix)}
}

// authQueryModeCheck: in pass-through mode the auth query's role logs in
// with a password, which must come from somewhere.
func authQueryModeCheck(cfg Config) error {
	w := cfg.Wire
	if w.AuthUser == "" || w.AuthPassword != "" || cfg.Backend.Token.Cmd != "" {
		return nil
	}
	if w.ClientAuthFile != "" && w.AuthFileHasPlain(w.AuthUser) {
		return nil
	}
	return confcheck.Problem{Vars: []string{envPrefix + "AUTH_USER", envPrefix + "AUTH_PASSWORD"}, Msg: fmt.Sprintf(
		"%sAUTH_USER=%q needs a password to log in and run the auth query: set %sAUTH_PASSWORD, or give the role a plain-text entry in %sCLIENT_AUTH_FILE",
		envPrefix, w.AuthUser, envPrefix, envPrefix)}
}
