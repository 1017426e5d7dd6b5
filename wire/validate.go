package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/querycop/querycop/internal/confcheck"
)

// Variable names, from the env tags the configuration is read with, used
// in full in every problem.
var (
	envListenPort   = confcheck.Var(Config{}, "GATEKEEPER_", "ListenPort")
	envTLSCert      = confcheck.Var(Config{}, "GATEKEEPER_", "TLSCert")
	envTLSKey       = confcheck.Var(Config{}, "GATEKEEPER_", "TLSKey")
	envLoginTimeout = confcheck.Var(Config{}, "GATEKEEPER_", "LoginTimeout")
)

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names its variables (EnvVars) and says how to fix it. It
// loads the certificate pair, so a wrong path or a mismatched key stops
// start-up instead of the first client that asks for TLS.
func (c Config) Validate() error {
	var problems []error
	add := func(msg string, vars ...string) { problems = append(problems, confcheck.New(msg, vars...)) }

	if c.ListenPort < 1 || c.ListenPort > 65535 {
		add(fmt.Sprintf("%s=%d is not a TCP port; use 1 to 65535", envListenPort, c.ListenPort), envListenPort)
	}
	if c.ClientTLS == ClientTLSRequire && c.TLSCert == "" {
		add("GATEKEEPER_CLIENT_TLS=require needs GATEKEEPER_PROXY_TLS_CERT and GATEKEEPER_PROXY_TLS_KEY: no client could connect", "GATEKEEPER_CLIENT_TLS", envTLSCert)
	}
	if c.TLSClientCA != "" {
		if c.TLSCert == "" {
			add("GATEKEEPER_PROXY_TLS_CLIENT_CA is set but GATEKEEPER_PROXY_TLS_CERT is not: client certificates are only asked for over TLS", "GATEKEEPER_PROXY_TLS_CLIENT_CA", envTLSCert)
		} else if pem, err := os.ReadFile(c.TLSClientCA); err != nil {
			add(fmt.Sprintf("GATEKEEPER_PROXY_TLS_CLIENT_CA is unreadable: %v", err), "GATEKEEPER_PROXY_TLS_CLIENT_CA")
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			add("GATEKEEPER_PROXY_TLS_CLIENT_CA holds no PEM certificate; give a bundle of the CAs that sign client certificates", "GATEKEEPER_PROXY_TLS_CLIENT_CA")
		}
	}
	if c.ClientAuthFile != "" {
		if _, err := c.clientAuthFile(); err != nil {
			add(fmt.Sprintf("GATEKEEPER_CLIENT_AUTH_FILE cannot be used: %v; give a file of \"user\" \"password\" lines (PgBouncer's userlist.txt format)", err), "GATEKEEPER_CLIENT_AUTH_FILE")
		}
	}
	if c.AuthUser != "" {
		if !strings.Contains(c.AuthQuery, "$1") {
			add(fmt.Sprintf("GATEKEEPER_AUTH_QUERY=%q does not use $1, the client's user name; give a query such as %q", c.AuthQuery, DefaultAuthQuery), "GATEKEEPER_AUTH_QUERY")
		}
		if c.AuthDatabase == "" {
			add("GATEKEEPER_AUTH_DBNAME is empty; name the database where the auth query's lookup function is (default postgres)", "GATEKEEPER_AUTH_DBNAME")
		}
	}
	if c.AuthQueryCacheTTL < 0 {
		add(fmt.Sprintf("GATEKEEPER_AUTH_QUERY_CACHE_TTL=%s must not be negative; 0 asks the server at every login", c.AuthQueryCacheTTL), "GATEKEEPER_AUTH_QUERY_CACHE_TTL")
	}
	if c.MaxMessageSize < 1024 {
		add(fmt.Sprintf("GATEKEEPER_MAX_MESSAGE_SIZE=%d is too small; give a size in bytes of at least 1024 (default 268435456, 256 MiB)", c.MaxMessageSize), "GATEKEEPER_MAX_MESSAGE_SIZE")
	}
	if c.ClientIdleTimeout < 0 {
		add(fmt.Sprintf("GATEKEEPER_CLIENT_IDLE_TIMEOUT=%s must not be negative; 0 turns it off", c.ClientIdleTimeout), "GATEKEEPER_CLIENT_IDLE_TIMEOUT")
	}
	if c.IdleInTransactionTimeout < 0 {
		add(fmt.Sprintf("GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT=%s must not be negative; 0 turns it off", c.IdleInTransactionTimeout), "GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT")
	}
	if c.MaxPreparedStatements < 1 {
		add(fmt.Sprintf("GATEKEEPER_MAX_PREPARED_STATEMENTS=%d must be at least 1", c.MaxPreparedStatements), "GATEKEEPER_MAX_PREPARED_STATEMENTS")
	}
	if c.MaxClientConn < 1 {
		add(fmt.Sprintf("GATEKEEPER_MAX_CLIENT_CONN=%d must be at least 1", c.MaxClientConn), "GATEKEEPER_MAX_CLIENT_CONN")
	}
	if c.LoginTimeout <= 0 {
		add(fmt.Sprintf("%s=%s must be positive; use a duration such as 15s", envLoginTimeout, c.LoginTimeout), envLoginTimeout)
	}

	switch {
	case c.TLSCert != "" && c.TLSKey == "":
		add(envTLSCert+" is set but "+envTLSKey+" is not; set both to offer TLS to clients, or neither", envTLSCert, envTLSKey)
	case c.TLSCert == "" && c.TLSKey != "":
		add(envTLSKey+" is set but "+envTLSCert+" is not; set both to offer TLS to clients, or neither", envTLSCert, envTLSKey)
	case c.TLSCert != "":
		// The loader's errors name files and PEM types, never key material.
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			add(fmt.Sprintf("%s and %s do not load as a certificate and key pair: %v; give a PEM certificate (chain) and its matching private key",
				envTLSCert, envTLSKey, err), envTLSCert, envTLSKey)
		}
	}
	return errors.Join(problems...)
}
