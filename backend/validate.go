package backend

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/querycop/querycop/internal/confcheck"
	"github.com/querycop/querycop/token"
)

// The variable names are product-stable (cookbooks link to them), so
// problems name them in full rather than by Go field.
var (
	envHost           = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "Host")
	envPort           = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "Port")
	envTLSMode        = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "TLSMode")
	envTLSCAFile      = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "TLSCAFile")
	envConnectTimeout = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "ConnectTimeout")
	envTokenCmd       = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "Token.Cmd")
	envTokenProvider  = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "Token.Provider")
	envTokenLifetime  = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_", "Token.Lifetime")
)

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names the variables it concerns (EnvVars) and says how to
// fix it. Validate reads TLSCAFile, so it also catches a bundle that is
// missing or damaged before the first client waits on it.
func (c Config) Validate() error {
	var problems []error
	add := func(msg string, vars ...string) { problems = append(problems, confcheck.New(msg, vars...)) }

	if strings.TrimSpace(c.Host) == "" {
		add(envHost+" is not set; set it to the host name or address of the PostgreSQL server", envHost)
	}
	if c.Port < 1 || c.Port > 65535 {
		add(fmt.Sprintf("%s=%d is not a TCP port; use 1 to 65535 (PostgreSQL listens on 5432 unless told otherwise)", envPort, c.Port), envPort)
	}
	if c.ConnectTimeout <= 0 {
		add(fmt.Sprintf("%s=%s must be positive; use a duration such as 10s", envConnectTimeout, c.ConnectTimeout), envConnectTimeout)
	}

	if c.TLSMode.Verifies() && c.TLSCAFile == "" {
		// Falling back to the system pool would make what is trusted depend
		// on the image Querycop happens to run in; naming the file keeps it
		// visible in the configuration.
		add(fmt.Sprintf("%s=%s needs %s: the implicit system certificate pool is deliberately not supported; "+
			"for a server with a publicly-trusted certificate point it at the OS bundle, e.g. /etc/ssl/certs/ca-certificates.crt",
			envTLSMode, c.TLSMode, envTLSCAFile), envTLSMode, envTLSCAFile)
	}
	if c.TLSCAFile != "" {
		if _, err := LoadCAFile(c.TLSCAFile); err != nil {
			add(fmt.Sprintf("%s is unusable: %v; point it at a readable PEM file of CA certificates", envTLSCAFile, err), envTLSCAFile)
		}
	}

	if c.Token.TokenMode() && !c.TLSMode.AlwaysTLS() {
		why := "can fall back to plaintext and would leak the token"
		if c.TLSMode == TLSDisable {
			why = "sends the token in plaintext"
		}
		// Name what the operator set: the command, or the built-in provider.
		what := envTokenCmd + " is set"
		tokenVar := envTokenCmd
		if p := c.Token.ProviderName(); p != "command" {
			what, tokenVar = envTokenProvider+"="+p, envTokenProvider
		}
		add(fmt.Sprintf("%s but %s=%s, which %s; set %s to verify-full (or verify-ca or require)",
			what, envTLSMode, c.TLSMode, why, envTLSMode), tokenVar, envTLSMode)
	}

	// A token is not used for a new login in its last ConnectTimeout +
	// ClockSkew (the login safety). An opaque token whose assumed lifetime
	// is no longer would be refused to every client, as "too soon to log in
	// with it", which points at the clock rather than at this setting.
	if safety := c.ConnectTimeout + token.ClockSkew; c.Token.ProviderName() == "command" &&
		c.ConnectTimeout > 0 && c.Token.Lifetime > 0 && c.Token.Lifetime <= safety {
		add(fmt.Sprintf("%s=%s is too short: a token is not used for a new backend login in its last %s (%s plus 30s), "+
			"so an opaque token would never be used; set it to the token's real lifetime (15m for RDS, 1h for Google), above %s",
			envTokenLifetime, c.Token.Lifetime, safety, envConnectTimeout, safety), envTokenLifetime, envConnectTimeout)
	}

	if err := c.Token.Validate(); err != nil {
		// Keep one problem per entry, so callers see each one on its own.
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = append(problems, j.Unwrap()...)
		} else {
			problems = append(problems, err)
		}
	}
	return errors.Join(problems...)
}

var pemCertBegin = []byte("-----BEGIN CERTIFICATE-----")

// LoadCAFile reads a PEM bundle of CA certificates. Unlike
// x509.CertPool.AppendCertsFromPEM, which skips what it cannot parse, it
// refuses a file in which any certificate block is damaged: a half-broken
// bundle would otherwise fail only when the server presents the chain the
// damaged certificate was meant to cover. Blocks of other types are ignored.
func LoadCAFile(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	markers := bytes.Count(data, pemCertBegin)
	if markers == 0 {
		return nil, fmt.Errorf("CA file %s holds no %s block", path, pemCertBegin)
	}

	pool := x509.NewCertPool()
	decoded := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		decoded++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %s: certificate %d does not parse: %w", path, decoded, err)
		}
		pool.AddCert(cert)
	}
	// pem.Decode silently skips a block it cannot decode, so count the
	// BEGIN lines to notice one.
	if decoded < markers {
		return nil, fmt.Errorf("CA file %s: %d of %d certificate blocks are not valid PEM (damaged base64 or missing END line)",
			path, markers-decoded, markers)
	}
	return pool, nil
}
