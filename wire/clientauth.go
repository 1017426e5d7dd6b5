package wire

import (
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/reasons"
)

// clientCredential is what a client proved, in the form the backend login
// takes in pass-through mode: its password (asked for in cleartext, or a
// plain-text auth file entry), or the SCRAM keys recovered from its proof
// when it was checked against a SCRAM verifier. Neither is ever logged.
type clientCredential struct {
	password string
	scram    *backend.SCRAMKeys
	// method is how the client leg authenticated, for the metrics: one
	// of loginMethods.
	method string
}

// loginMethods label querycop_client_logins_total: how clients proved who
// they are. "cleartext" is the one to watch: a password that crossed the
// client leg as typed.
var loginMethods = []string{methodSCRAMPlus, methodSCRAM, methodMD5, methodCleartext, methodNone}

const (
	methodSCRAMPlus = "scram-sha-256-plus"
	methodSCRAM     = "scram-sha-256"
	methodMD5       = "md5"
	methodCleartext = "cleartext"
	methodNone      = "none" // token mode without an auth file or auth query
)

// authenticateKnown checks the client against a verifier the gateway
// holds: its GATEKEEPER_CLIENT_AUTH_FILE entry or, for a user not in the
// file, what GATEKEEPER_AUTH_QUERY finds. handled is false when there is
// nothing to check against here and the client is to be asked for its
// password: neither is configured, or (pass-through mode) the auth query
// found the user but no SCRAM secret, so the server must judge the
// password itself.
func (ss *session) authenticateKnown(user string) (cred clientCredential, handled bool, err error) {
	srv := ss.srv
	if srv.auth == nil && srv.authQuery == nil {
		return clientCredential{}, false, nil
	}
	addr := remoteIP(ss.conn)
	if srv.failures.blocked(addr) {
		return clientCredential{}, true, &clientError{fatal(codeInvalidAuthorization,
			"too many failed logins from this address; try again in a minute"), reasons.LoginRateLimited}
	}
	var entry *authEntry
	if srv.auth != nil {
		var reloadErr error
		entry, reloadErr = srv.auth.lookup(user)
		if reloadErr != nil {
			ss.log.Warn().Err(reloadErr).Msg("GATEKEEPER_CLIENT_AUTH_FILE changed but does not parse; keeping its previous contents")
		}
	}
	fromQuery := false
	if entry == nil && srv.authQuery != nil {
		res := srv.authQuery.lookup(srv.ctx, user)
		switch {
		case res.err != nil:
			return clientCredential{}, true, res.err
		case res.verifier != nil:
			entry, fromQuery = &authEntry{scram: res.verifier}, true
		case res.found && !srv.tokenMode:
			// A role without a SCRAM secret (none, or MD5): only the
			// server can check its password, so it is asked for.
			ss.log.Debug().Msg("the auth query found no SCRAM secret for the user; asking for the password")
			return clientCredential{}, false, nil
		}
		// Not found, or found without a SCRAM secret in token mode
		// (nothing to check the client against): the decoy exchange.
	}
	cred, err = ss.authenticateFromFile(user, entry)
	if errors.Is(err, errBadPassword) {
		srv.failures.record(addr)
		if fromQuery {
			// Perhaps the password was just changed and the cache holds
			// the old secret: the client's next try reads it afresh.
			srv.authQuery.invalidate(user, false)
		}
		return clientCredential{}, true, &clientError{fatal(codeInvalidPassword, "password authentication failed for user "+quoteName(user)), reasons.ClientAuthFailed}
	}
	if err == nil && !srv.tokenMode && cred.password == "" && cred.scram == nil {
		// An MD5 entry proves the client knows the password but gives
		// nothing to log in to PostgreSQL with. Start-up refuses them in
		// pass-through mode; one added later by a reload lands here.
		return clientCredential{}, true, &clientError{fatal(codeInvalidAuthorization, fmt.Sprintf(
			"user %s has an MD5 entry in GATEKEEPER_CLIENT_AUTH_FILE, but pass-through mode logs in to PostgreSQL with the password or SCRAM keys, which an MD5 hash does not give: use the user's SCRAM secret from pg_authid or a plain-text entry", quoteName(user))), reasons.ClientAuthFailed}
	}
	return cred, true, err
}

// verifierRefused is told of a pool admission that failed; when the server
// refused SCRAM keys because its secret for the user changed, the cached
// auth query result is dropped, so the client's next try uses the new one.
func (s *Server) verifierRefused(user string, err error) {
	var vm *backend.VerifierMismatchError
	if !errors.As(err, &vm) {
		return
	}
	if s.authQuery != nil {
		s.authQuery.invalidate(user, true)
	}
	if s.auth != nil {
		if e, _ := s.auth.lookup(user); e != nil && e.scram != nil {
			s.log.Warn().Str("user", user).Msg("the SCRAM secret for this user in GATEKEEPER_CLIENT_AUTH_FILE no longer matches the server's (its password was changed): copy the new secret from pg_authid into the file")
		}
	}
}

// setUpAuthQuery prepares GATEKEEPER_AUTH_QUERY when GATEKEEPER_AUTH_USER
// is set.
func (s *Server) setUpAuthQuery() error {
	cfg := s.cfg
	if cfg.AuthUser == "" {
		return nil
	}
	if s.dialer == nil {
		return errors.New("GATEKEEPER_AUTH_USER is set but the server was given no backend dialer to run the auth query with")
	}
	if cfg.AuthQuery == "" {
		cfg.AuthQuery = DefaultAuthQuery
	}
	if cfg.AuthDatabase == "" {
		cfg.AuthDatabase = "postgres"
	}
	// The auth user's password: its own variable, else its plain-text entry
	// in the auth file (as PgBouncer takes auth_user's from auth_file),
	// read at each login so a reload of the file applies.
	password := func() string {
		if cfg.AuthPassword != "" || s.auth == nil {
			return cfg.AuthPassword
		}
		if e, _ := s.auth.lookup(cfg.AuthUser); e != nil {
			return e.plain
		}
		return ""
	}
	s.authQuery = newAuthQuery(cfg, s.dialer, password, s.log.With().Str("component", "auth-query").Logger())
	return nil
}

func (s *Server) closeAuthQuery() {
	if s.authQuery != nil {
		s.authQuery.close()
	}
}

// maxPasswordLen bounds the password message, as PostgreSQL's
// PG_MAX_AUTH_TOKEN_LENGTH does.
const maxPasswordLen = 65535

// authenticate checks the client. Against a verifier the gateway holds
// (GATEKEEPER_CLIENT_AUTH_FILE, GATEKEEPER_AUTH_QUERY) it runs SCRAM or MD5
// itself: see authenticateKnown. Otherwise, in pass-through mode, it asks
// for the password, which is the backend credential; in token mode it asks
// for nothing: a password would protect nothing (it would be dropped), and
// libpq refuses to send an empty one, so asking only made users invent one.
func (ss *session) authenticate(user string) (clientCredential, error) {
	if cred, handled, err := ss.authenticateKnown(user); handled {
		return cred, err
	}
	if ss.srv.tokenMode {
		return clientCredential{method: methodNone}, nil
	}
	buf, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if _, err := ss.conn.Write(buf); err != nil {
		return clientCredential{}, err
	}
	typ, body, err := readMessage(ss.conn, maxPasswordLen)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return clientCredential{}, errClientGone
		}
		return clientCredential{}, err
	}
	if typ == 'X' {
		return clientCredential{}, errClientGone
	}
	if typ != 'p' {
		return clientCredential{}, protocolErrorf("expected password response, got message type %d", typ)
	}
	if len(body) == 0 || body[len(body)-1] != 0 {
		return clientCredential{}, protocolErrorf("invalid password packet")
	}
	return clientCredential{password: string(body[:len(body)-1]), method: methodCleartext}, nil
}
