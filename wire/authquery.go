package wire

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// BackendDialer opens the auth query's connection; *backend.Dialer
// satisfies it.
type BackendDialer interface {
	Dial(ctx context.Context, p backend.Params) (*backend.Conn, error)
}

// Option adjusts a Server at creation.
type Option func(*Server)

// WithBackendDialer gives the server the dialer the auth query
// (GATEKEEPER_AUTH_USER) logs in with; without it the auth query is not run.
func WithBackendDialer(d BackendDialer) Option {
	return func(s *Server) { s.dialer = d }
}

// DefaultAuthQuery reads a user's secret through the SECURITY DEFINER
// function docs/security.md gives, as PgBouncer's auth_query does.
const DefaultAuthQuery = "SELECT username, secret FROM querycop.lookup($1)"

// Bounds of the auth query's cache: a flood of logins for made-up names
// costs at most one query per name (serialised on one connection), and the
// memory stays bounded.
const (
	authQueryMaxEntries = 10000
	// authQueryErrorTTL is how long a failed query (role missing, server
	// down) answers the logins that follow, so they do not each redial.
	authQueryErrorTTL = time.Second
	// authQueryRefetchAfter: a cached result younger than this is not
	// fetched again on a failed login, so wrong passwords cannot turn into
	// one query each.
	authQueryRefetchAfter = time.Second
	// authConnIdle closes the auth query's connection when unused; a new
	// one is opened on demand.
	authConnIdle = time.Minute
	// authConnMaxAge replaces the connection now and then, as the pool
	// retires its own (token mode: the token it logged in with expires).
	authConnMaxAge = 30 * time.Minute
)

// authQueryResult is what the auth query said about one user.
type authQueryResult struct {
	found    bool
	verifier *scramVerifier // nil: not found, or no SCRAM secret
	err      error          // the lookup itself failed: a *clientError
}

type authQueryEntry struct {
	ready chan struct{} // closed once res is set; waiters share the one query
	res   authQueryResult
	at    time.Time
}

// authQuery looks up clients' SCRAM verifiers on the server with
// GATEKEEPER_AUTH_QUERY, logged in as GATEKEEPER_AUTH_USER, over one
// connection kept open while in use, and caches each answer (found, not
// found, failed) per user.
type authQuery struct {
	dialer       BackendDialer
	user         string
	password     func() string // pass-through: the auth user's password
	database     string
	query        string
	ttl          time.Duration
	queryTimeout time.Duration
	log          zerolog.Logger

	// connSem (capacity 1) lets one query at a time use conn; a channel
	// rather than a mutex, so a login queued behind others gives up at its
	// deadline instead of waiting without bound.
	connSem chan struct{}
	conn    *backend.Conn // guarded by connSem, as are the fields below
	connAt  time.Time
	lastUse time.Time
	idle    *time.Timer
	closed  bool

	mu       sync.Mutex
	entries  map[string]*authQueryEntry // guarded by mu
	lastWarn time.Time                  // guarded by mu
	// loginErr is the auth role's last failed login, answered without a
	// new login until loginRetry: a flood of made-up names must not turn
	// into one failed login per name. Guarded by mu.
	loginErr     *clientError
	loginRetry   time.Time
	loginBackoff time.Duration
	counts       map[string]int64 // lookups by result; guarded by mu
}

// authQueryResults label querycop_auth_query_lookups_total: "cached" was
// answered without a query (or by another login's), the others are what a
// query found.
var authQueryResults = []string{"cached", "scram", "no_scram", "not_found", "failed"}

func (r authQueryResult) label() string {
	switch {
	case r.err != nil:
		return "failed"
	case r.verifier != nil:
		return "scram"
	case r.found:
		return "no_scram"
	}
	return "not_found"
}

// stats returns the lookups by result.
func (aq *authQuery) stats() map[string]int64 {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	out := make(map[string]int64, len(authQueryResults))
	for _, r := range authQueryResults {
		out[r] = aq.counts[r]
	}
	return out
}

func newAuthQuery(cfg Config, d BackendDialer, password func() string, log zerolog.Logger) *authQuery {
	return &authQuery{
		dialer: d, user: cfg.AuthUser, password: password, database: cfg.AuthDatabase,
		query: cfg.AuthQuery, ttl: cfg.AuthQueryCacheTTL, queryTimeout: cfg.LoginTimeout,
		log: log, entries: map[string]*authQueryEntry{}, connSem: make(chan struct{}, 1), counts: map[string]int64{},
	}
}

// lookup returns the cached answer for user or asks the server; logins for
// the same user wait for one query. ctx bounds the wait, not the query,
// which other logins may be waiting for too.
func (aq *authQuery) lookup(ctx context.Context, user string) authQueryResult {
	aq.mu.Lock()
	e := aq.entries[user]
	if e != nil && !aq.fresh(e) {
		delete(aq.entries, user)
		e = nil
	}
	owner := e == nil
	if owner {
		aq.makeRoom()
		e = &authQueryEntry{ready: make(chan struct{})}
		aq.entries[user] = e
	}
	aq.mu.Unlock()

	if owner {
		res := aq.fetch(user)
		aq.mu.Lock()
		e.res, e.at = res, time.Now()
		aq.counts[res.label()]++
		aq.mu.Unlock()
		close(e.ready)
		return res
	}
	select {
	case <-e.ready:
		aq.mu.Lock()
		defer aq.mu.Unlock()
		aq.counts["cached"]++
		return e.res
	case <-ctx.Done():
		return authQueryResult{err: &clientError{fatal(codeCannotConnect, "gave up waiting for the auth query"), reasons.AuthQueryFailed}}
	}
}

// fresh reports whether e may still answer; called with mu held.
func (aq *authQuery) fresh(e *authQueryEntry) bool {
	select {
	case <-e.ready:
	default:
		return true // being fetched
	}
	ttl := aq.ttl
	if e.res.err != nil {
		ttl = min(ttl, authQueryErrorTTL)
	}
	return time.Since(e.at) < ttl
}

// makeRoom keeps the cache within authQueryMaxEntries; called with mu held.
func (aq *authQuery) makeRoom() {
	if len(aq.entries) < authQueryMaxEntries {
		return
	}
	for user, e := range aq.entries {
		if !aq.fresh(e) {
			delete(aq.entries, user)
		}
	}
	for user, e := range aq.entries { // still full: drop settled entries at random
		if len(aq.entries) < authQueryMaxEntries {
			break
		}
		select {
		case <-e.ready:
			delete(aq.entries, user)
		default:
		}
	}
}

// invalidate forgets the cached answer for user, so the next login asks
// the server again. Unless force (the server itself said the secret
// changed), an answer fetched within the last second is kept: a stream of
// wrong passwords must not turn into a stream of queries.
func (aq *authQuery) invalidate(user string, force bool) {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	if e := aq.entries[user]; e != nil {
		select {
		case <-e.ready:
			if force || time.Since(e.at) >= authQueryRefetchAfter {
				delete(aq.entries, user)
			}
		default:
		}
	}
}

// flush forgets every settled answer.
func (aq *authQuery) flush() {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	// SIGHUP: an operator who fixed the auth role's password wants it
	// tried now.
	aq.loginErr, aq.loginBackoff = nil, 0
	for user, e := range aq.entries {
		select {
		case <-e.ready:
			delete(aq.entries, user)
		default:
		}
	}
}

// fetch runs the auth query for user, on the kept connection, redialling
// once if that connection turns out to be broken.
func (aq *authQuery) fetch(user string) authQueryResult {
	ctx, cancel := context.WithTimeout(context.Background(), aq.queryTimeout)
	defer cancel()
	select {
	case aq.connSem <- struct{}{}:
	case <-ctx.Done():
		// Queued behind other lookups for the whole timeout: the
		// connection itself is fine, so it is left alone.
		return aq.failed(&clientError{fatal(codeCannotConnect, fmt.Sprintf(
			"querycop cannot look up passwords: the auth query is busy with other logins (waited %s, GATEKEEPER_CLIENT_LOGIN_TIMEOUT)", aq.queryTimeout)), reasons.AuthQueryFailed})
	}
	defer func() { <-aq.connSem }()
	if aq.closed {
		return authQueryResult{err: &clientError{fatal(codeCannotConnectNow, "querycop is shutting down"), reasons.AuthQueryFailed}}
	}
	for attempt := 0; ; attempt++ {
		fresh := false
		if aq.conn == nil || time.Since(aq.connAt) > authConnMaxAge {
			aq.dropConn()
			if ce := aq.loginBackingOff(); ce != nil {
				return authQueryResult{err: ce}
			}
			c, err := aq.dialer.Dial(ctx, backend.Params{User: aq.user, Database: aq.database, Password: aq.password(),
				Runtime: map[string]string{"application_name": "querycop auth query"}})
			if err != nil {
				ce := aq.loginError(err)
				aq.loginFailed(ce)
				return aq.failed(ce)
			}
			aq.loginSucceeded()
			aq.conn, aq.connAt, fresh = c, time.Now(), true
		}
		rows, total, err := aq.conn.Query(ctx, aq.query, []string{user}, 1)
		aq.lastUse = time.Now()
		aq.armIdle()
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			return aq.result(user, rows, total)
		case errors.As(err, &pgErr) && unencodableName(pgErr):
			// A name the server cannot take as text (not UTF-8, or not
			// in its encoding) names no role: an unknown user, as
			// PostgreSQL answers it, not a broken auth query.
			return authQueryResult{}
		case errors.As(err, &pgErr):
			return aq.failed(aq.queryError(pgErr))
		}
		aq.dropConn()
		if fresh || attempt > 0 {
			return aq.failed(&clientError{fatal(codeCannotConnect, "the auth query (GATEKEEPER_AUTH_QUERY) failed: "+err.Error()), reasons.AuthQueryFailed})
		}
		// A kept connection the server closed meanwhile: once more, anew.
	}
}

// unencodableName reports whether the server refused the user name
// parameter itself: character_not_in_repertoire, untranslatable_character.
func unencodableName(pgErr *pgconn.PgError) bool {
	return pgErr.Code == "22021" || pgErr.Code == "22P05"
}

// result reads the query's answer: no row is an unknown user; one row has
// the user's secret in its second column (NULL: none).
func (aq *authQuery) result(user string, rows [][]*string, total int) authQueryResult {
	switch {
	case total == 0:
		return authQueryResult{}
	case total > 1:
		return aq.failed(&clientError{fatal(codeInvalidAuthorization, fmt.Sprintf(
			"the auth query (GATEKEEPER_AUTH_QUERY) returned %d rows for user %s; it must return at most one (user name, secret)", total, quoteName(user))), reasons.AuthQueryFailed})
	case len(rows[0]) < 2:
		return aq.failed(&clientError{fatal(codeInvalidAuthorization,
			"the auth query (GATEKEEPER_AUTH_QUERY) must return two columns, the user name and its secret"), reasons.AuthQueryFailed})
	}
	secret := rows[0][1]
	if secret == nil || !strings.HasPrefix(*secret, "SCRAM-SHA-256$") {
		return authQueryResult{found: true}
	}
	v, err := parseSCRAMVerifier(*secret)
	if err != nil {
		aq.log.Warn().Str("user", user).Err(err).Msg("the auth query returned a SCRAM secret that does not parse; treating the user as having none")
		return authQueryResult{found: true}
	}
	return authQueryResult{found: true, verifier: v}
}

// failed logs a failure of the lookup (at most once a second: a broken
// setup fails every login) and returns it for the client.
func (aq *authQuery) failed(ce *clientError) authQueryResult {
	aq.mu.Lock()
	warn := time.Since(aq.lastWarn) >= time.Second
	if warn {
		aq.lastWarn = time.Now()
	}
	aq.mu.Unlock()
	if warn {
		aq.log.Warn().Str("auth_user", aq.user).Str("error", ce.Error()).Msg("auth query failed; clients without an auth file entry cannot log in")
	}
	return authQueryResult{err: ce}
}

// Backoff of the auth role's logins after a failure: from
// authLoginBackoffMin, doubling to authLoginBackoffMax.
const (
	authLoginBackoffMin = time.Second
	authLoginBackoffMax = 30 * time.Second
)

// loginBackingOff is the last login failure while its backoff lasts.
func (aq *authQuery) loginBackingOff() *clientError {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	if aq.loginErr != nil && time.Now().Before(aq.loginRetry) {
		return aq.loginErr
	}
	return nil
}

func (aq *authQuery) loginFailed(ce *clientError) {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	aq.loginBackoff = min(max(2*aq.loginBackoff, authLoginBackoffMin), authLoginBackoffMax)
	aq.loginErr, aq.loginRetry = ce, time.Now().Add(aq.loginBackoff)
}

func (aq *authQuery) loginSucceeded() {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	aq.loginErr, aq.loginBackoff = nil, 0
}

// loginError says why GATEKEEPER_AUTH_USER could not log in.
func (aq *authQuery) loginError(err error) *clientError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		resp := fatal(codeInvalidAuthorization, fmt.Sprintf(
			"querycop cannot look up passwords: its auth query role GATEKEEPER_AUTH_USER %q cannot log in to database %q: %s (SQLSTATE %s)",
			aq.user, aq.database, pgErr.Message, pgErr.Code))
		resp.Hint = "Check that the role exists and may log in (docs/security.md shows how to create it) and that GATEKEEPER_AUTH_PASSWORD is its password (in token mode: that the token command mints tokens for it)."
		return &clientError{resp, reasons.AuthQueryFailed}
	}
	resp, _ := backendErrorResponse(err)
	resp.Message = "querycop cannot look up passwords: " + resp.Message
	return &clientError{resp, reasons.AuthQueryFailed}
}

// queryError says why GATEKEEPER_AUTH_QUERY failed on the server.
func (aq *authQuery) queryError(pgErr *pgconn.PgError) *clientError {
	resp := fatal(codeInvalidAuthorization, fmt.Sprintf(
		"querycop cannot look up passwords: the auth query (GATEKEEPER_AUTH_QUERY) failed: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code))
	resp.Hint = fmt.Sprintf("Create the lookup function in database %q and grant EXECUTE on it to %q, as docs/security.md shows.", aq.database, aq.user)
	return &clientError{resp, reasons.AuthQueryFailed}
}

// armIdle (re)starts the idle timer; called holding connSem.
func (aq *authQuery) armIdle() {
	if aq.idle == nil {
		aq.idle = time.AfterFunc(authConnIdle, aq.closeIfIdle)
		return
	}
	aq.idle.Reset(authConnIdle)
}

func (aq *authQuery) closeIfIdle() {
	aq.connSem <- struct{}{}
	defer func() { <-aq.connSem }()
	if aq.conn != nil && time.Since(aq.lastUse) >= authConnIdle {
		aq.dropConn()
	}
}

// dropConn closes the connection; called holding connSem.
func (aq *authQuery) dropConn() {
	if aq.conn != nil {
		aq.conn.Close()
		aq.conn = nil
	}
}

// close ends the connection for good (the server is closing).
func (aq *authQuery) close() {
	aq.connSem <- struct{}{}
	defer func() { <-aq.connSem }()
	aq.closed = true
	if aq.idle != nil {
		aq.idle.Stop()
	}
	aq.dropConn()
}

// CheckAuthQuery runs the auth query once for user as a login would
// (`querycop check`), and says what a client of that name would get. It
// never returns the secret. authFile is consulted, as at run time, for the
// auth user's password when cfg has none.
func CheckAuthQuery(cfg Config, d BackendDialer, user string) (string, error) {
	srv := &Server{cfg: cfg, dialer: d, log: zerolog.Nop()}
	if cfg.ClientAuthFile != "" {
		af, err := cfg.clientAuthFile()
		if err != nil {
			return "", fmt.Errorf("reading GATEKEEPER_CLIENT_AUTH_FILE: %w", err)
		}
		srv.auth = af
	}
	if err := srv.setUpAuthQuery(); err != nil {
		return "", err
	}
	defer srv.closeAuthQuery()
	// Bounded by GATEKEEPER_CLIENT_LOGIN_TIMEOUT, as at a login.
	res := srv.authQuery.fetch(user)
	var ce *clientError
	switch {
	case errors.As(res.err, &ce):
		msg := ce.resp.Message
		if ce.resp.Hint != "" {
			msg += " (" + ce.resp.Hint + ")"
		}
		return "", errors.New(msg)
	case res.err != nil:
		return "", res.err
	case res.verifier != nil:
		return fmt.Sprintf("ran as %s in database %s: user %s has a SCRAM secret (%d iterations): SCRAM end to end",
			quoteName(cfg.AuthUser), quoteName(srv.authQuery.database), quoteName(user), res.verifier.iterations), nil
	case res.found:
		return fmt.Sprintf("ran as %s in database %s: user %s has no SCRAM secret: pass-through mode asks for its password in cleartext, token mode refuses it",
			quoteName(cfg.AuthUser), quoteName(srv.authQuery.database), quoteName(user)), nil
	default:
		return fmt.Sprintf("ran as %s in database %s: no user %s (not a login role, a superuser, or expired): such clients are refused",
			quoteName(cfg.AuthUser), quoteName(srv.authQuery.database), quoteName(user)), nil
	}
}
