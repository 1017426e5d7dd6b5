package wire

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/reasons"
)

// Console is PgBouncer's admin console on the pool port: a virtual database
// (pgbouncer, or querycop) answering SHOW POOLS and the like to the users
// GATEKEEPER_ADMIN_USERS names. Package console implements it; the session
// only routes to it and authenticates the user first, like any client.
type Console interface {
	// IsConsole reports whether database names the console.
	IsConsole(database string) bool
	// Allowed reports whether user may use the console.
	Allowed(user string) bool
	// Serve answers the authenticated user's commands on conn, from the
	// first ReadyForQuery on, until the client leaves or conn fails; it
	// returns why the session ended (a reason of operations.md §3.4).
	Serve(conn net.Conn, user string, log zerolog.Logger) string
}

// consoleAuthDatabase is the database a pass-through login is checked
// against for the console: every PostgreSQL server has it, and the console
// itself has no database on the server to log in to.
const consoleAuthDatabase = "postgres"

// SetConsole turns the admin console on; call it before Serve.
func (s *Server) SetConsole(c Console) { s.console = c }

// runConsole authenticates a console user and hands the session over to
// the console. Users the console does not allow are refused before any
// password is asked for, so the console's name cannot be used to try
// passwords against the backend.
func (ss *session) runConsole(params backend.Params) {
	if !ss.srv.console.Allowed(params.User) {
		ss.failStartup(&clientError{fatal(codeInvalidAuthorization, fmt.Sprintf(
			"user %q may not use the admin console database %q: only the users in GATEKEEPER_ADMIN_USERS may", params.User, params.Database)), "bad-startup"})
		return
	}
	_, handled, err := ss.authenticateKnown(params.User)
	if handled {
		// Checked here against the auth file or the auth query's secret.
		if err != nil {
			ss.failStartup(err)
			return
		}
	} else {
		if ss.srv.tokenMode {
			// Token mode checks no client password of its own; start-up
			// refuses this configuration, and this keeps it refused.
			ss.failStartup(&clientError{fatal(codeInvalidAuthorization,
				"the admin console needs GATEKEEPER_CLIENT_AUTH_FILE or GATEKEEPER_AUTH_USER in token mode, to check its users' passwords"), "bad-startup"})
			return
		}
		// Pass-through mode: PostgreSQL checks the password, by a login
		// as this user (the connection joins that user's pool).
		cred, err := ss.authenticate(params.User)
		if err != nil {
			ss.failStartup(err)
			return
		}
		_ = ss.conn.SetDeadline(time.Time{})
		pl, err := ss.srv.pools.Admit(ss.srv.ctx, backend.Params{User: params.User, Database: consoleAuthDatabase, Password: cred.password})
		if err != nil {
			if loginRefused(err) {
				ss.srv.failures.record(remoteIP(ss.conn)) // as for any client
			}
			ss.refuse(err)
			return
		}
		pl.Leave()
	}
	_ = ss.conn.SetDeadline(time.Time{})
	if err := ss.flushAuthFinal(); err != nil {
		ss.log.Info().Str("reason", string(reasons.ClientGone)).Err(err).Msg("client closed during handoff")
		return
	}
	ss.setView(func(v *ClientInfo) { v.State = "idle" })
	ss.log.Info().Bool("tls", ss.tls).Msg("admin console session started")
	reason := ss.srv.console.Serve(&consoleConn{Conn: ss.conn, mu: &ss.writeMu}, params.User, ss.log)
	if ss.killed.Load() {
		reason = string(reasons.Shutdown)
	}
	ss.log.Info().Str("reason", reason).Dur("duration", time.Since(ss.since)).Msg("client closed")
}

// consoleConn serialises the console's writes with kill's, so a shutdown
// notice never lands inside one of its messages.
type consoleConn struct {
	net.Conn
	mu *sync.Mutex
}

func (c *consoleConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(b)
}
