// Package console is PgBouncer's admin console, read-mostly, on Querycop's
// pool port: a virtual database named pgbouncer (or querycop) where the
// users of GATEKEEPER_ADMIN_USERS run SHOW POOLS, SHOW STATS and the other
// commands operators, the Prometheus community's pgbouncer_exporter and
// Datadog's PgBouncer check already use, with PgBouncer's column names and
// types; PAUSE, RESUME and RELOAD map to Querycop's own operations.
//
// The session (package wire) authenticates the user like any client and
// then hands the connection to Serve. Only the simple query protocol is
// spoken, as in PgBouncer.
package console

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/internal/confcheck"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// Config turns the console on. Keys are read under GATEKEEPER_.
type Config struct {
	AdminUsers []string `env:"ADMIN_USERS" help:"comma-separated users who may open the admin console: the virtual database pgbouncer (or querycop) on the pool port, with PgBouncer's SHOW commands, PAUSE, RESUME and RELOAD; they authenticate like any client; empty: no console"`
}

// Validate refuses empty names ("alice,,bob").
func (c Config) Validate() error {
	for _, u := range c.AdminUsers {
		if strings.TrimSpace(u) == "" {
			return confcheck.Problem{Vars: []string{"GATEKEEPER_ADMIN_USERS"},
				Msg: fmt.Sprintf("GATEKEEPER_ADMIN_USERS=%q has an empty user name; list user names separated by commas", strings.Join(c.AdminUsers, ","))}
		}
	}
	return nil
}

// Enabled reports whether any user may use the console.
func (c Config) Enabled() bool { return len(c.AdminUsers) > 0 }

// Databases are the names of the console's virtual database: PgBouncer's,
// which tools expect, and Querycop's own.
var Databases = []string{"pgbouncer", "querycop"}

// Pools is what the console reads and steers in the pools.
type Pools interface {
	Stats() []pool.Stats
	Pause()
	Resume()
	Paused() bool
}

// Clients is the client side's read-only view.
type Clients interface {
	Clients() []wire.ClientInfo
	StatsByDatabase() map[string]wire.Stats
}

// Setting is one row of SHOW CONFIG.
type Setting struct {
	Key, Value, Default string
	Changeable          bool
}

// Deps are the figures and operations the console serves.
type Deps struct {
	Pools   Pools
	Clients Clients
	// Reload is RELOAD: what SIGHUP does.
	Reload func() error
	// Settings are SHOW CONFIG's rows, secrets already redacted.
	Settings []Setting
	Version  string // Querycop's, for SHOW VERSION
	PoolMode string // session or transaction

	BackendHost    string
	BackendPort    int
	ListenPort     int
	PoolSize       int
	MinPoolSize    int
	ServerLifetime time.Duration
	MaxClientConn  int
}

// Console serves the admin console; safe for concurrent sessions.
type Console struct {
	users map[string]bool
	deps  Deps

	mu      sync.Mutex
	samples [2]statsSample // for SHOW STATS's averages: the older and the newer
}

// New builds the console for cfg's users.
func New(cfg Config, deps Deps) *Console {
	c := &Console{users: map[string]bool{}, deps: deps}
	for _, u := range cfg.AdminUsers {
		c.users[strings.TrimSpace(u)] = true
	}
	return c
}

// IsConsole reports whether database names the console.
func (c *Console) IsConsole(database string) bool {
	for _, d := range Databases {
		if database == d {
			return true
		}
	}
	return false
}

// Allowed reports whether user is one of GATEKEEPER_ADMIN_USERS.
func (c *Console) Allowed(user string) bool { return c.users[user] }

// serverVersion is reported at start-up as PgBouncer does
// ("1.25.2/bouncer"): the PgBouncer release whose SHOW columns the console
// follows, so that tools which choose columns by version choose these.
const serverVersion = "1.25.2/querycop"

// maxQueryLen bounds a console query; PgBouncer's commands are short.
const maxQueryLen = 64 << 10

// Serve runs one console session on conn for an authenticated user: the
// rest of the start-up, then one command per Query message until the
// client leaves. It returns the reason the session ended.
func (c *Console) Serve(conn net.Conn, user string, log zerolog.Logger) string {
	be := pgproto3.NewBackend(conn, conn)
	be.SetMaxBodyLen(maxQueryLen)
	out := &writer{be: be}
	out.send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{
		{"server_version", serverVersion},
		{"client_encoding", "UTF8"},
		{"server_encoding", "UTF8"},
		{"DateStyle", "ISO"},
		{"TimeZone", "UTC"},
		{"standard_conforming_strings", "on"},
		{"is_superuser", "on"},
		{"application_name", ""},
	} {
		out.send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	out.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := out.flush(); err != nil {
		return "client-gone"
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return "client-gone"
			}
			var ne net.Error
			if errors.As(err, &ne) {
				return "client-gone"
			}
			// Malformed or oversized message.
			out.send(errorResponse("FATAL", codeProtocolViolation, fmt.Sprintf("invalid message for the admin console: %v", err)))
			_ = out.flush()
			return "protocol-violation"
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			c.query(out, m.String, user, log)
			out.send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return "client-close"
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Execute, *pgproto3.Describe, *pgproto3.Sync, *pgproto3.Close, *pgproto3.Flush:
			// As PgBouncer: the extended protocol ends the session,
			// with a message that says what to do instead.
			out.send(errorResponse("FATAL", codeFeatureNotSupported,
				"the admin console speaks only the simple query protocol, as PgBouncer's does; use psql, or your driver's simple protocol (pgx: QueryExecModeSimpleProtocol)"))
			_ = out.flush()
			return "protocol-violation"
		default:
			out.send(errorResponse("FATAL", codeProtocolViolation, fmt.Sprintf("unexpected message %T for the admin console", msg)))
			_ = out.flush()
			return "protocol-violation"
		}
		if err := out.flush(); err != nil {
			return "client-gone"
		}
	}
}

// SQLSTATEs the console answers with.
const (
	codeSyntaxError         = "42601"
	codeFeatureNotSupported = "0A000"
	codeProtocolViolation   = "08P01"
	codeObjectInState       = "55000"
	codeConfigFileError     = "F0000"
	codeUndefinedObject     = "42704"
)

func errorResponse(severity, code, msg string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: severity, SeverityUnlocalized: severity, Code: code, Message: msg}
}

// writer batches a reply into one write.
type writer struct {
	be *pgproto3.Backend
}

func (w *writer) send(m pgproto3.BackendMessage) { w.be.Send(m) }

func (w *writer) flush() error { return w.be.Flush() }
