package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/token"
	"github.com/querycop/querycop/wire"
)

// checkUsage is printed by `querycop check -h`.
const checkUsage = `Usage: querycop check [-user ROLE] [-database DB]

Checks, one line per step, what the gateway needs to serve a client:
the configuration, the token command (its token's expiry, never its value),
the backend's address, TLS (the certificate chain and the name verified),
and, given -user, authentication as that role. In pass-through mode the
password for -user is read from PGPASSWORD. With GATEKEEPER_AUTH_USER, the
auth query is run for -user (or for the auth role itself). Exits 1 when a step fails,
2 when the configuration is invalid.
`

// runCheck is `querycop check`: the first thing to run when the cookbook's
// smoke test fails.
func runCheck(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage) }
	user := fs.String("user", "", "role to mint a token for and authenticate as")
	database := fs.String("database", "", "database to authenticate to (default: the role's name)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitBadConfig
	}
	if *database == "" {
		*database = *user
	}
	report := func(status, step, format string, a ...any) {
		fmt.Fprintf(stdout, "%-5s %-7s %s\n", status, step, fmt.Sprintf(format, a...))
	}

	cfg, err := LoadConfig(environ)
	if err != nil {
		for _, p := range flatten(err) {
			report("fail", "config", "%v", p)
		}
		return exitBadConfig
	}
	for _, u := range unknownVars(environ) {
		report("warn", "config", "%s", describeUnknown(u))
	}
	b := cfg.Backend
	report("ok", "config", "backend %s:%d, TLS mode %s, %s", b.Host, b.Port, b.TLSMode, modeName(b))
	failed := false

	var tokens *token.Source
	if b.Token.TokenMode() {
		tcfg := b.Token
		tcfg.Reuse = true // the auth step uses the token this step minted
		minter, err := token.NewMinter(ctx, tcfg)
		if err != nil {
			report("fail", "token", "%v", err)
			return exitFailed
		}
		tokens = token.NewSource(tcfg, minter)
		tokens.LoginSafety = b.ConnectTimeout + token.ClockSkew // as serve sets it, so "used for new connections until" is the gateway's
		defer tokens.Close()
		start := time.Now()
		tok, err := tokens.Token(ctx, token.Target{Host: b.Host, Port: b.Port, User: *user, Database: *database})
		if err != nil {
			report("fail", "token", "%v", err)
			failed = true
		} else {
			report("ok", "token", "%s minted in %s for user %q; expires %s (in %s); used for new connections until %s",
				tokens.Provider(), time.Since(start).Round(time.Millisecond), *user, tok.Expiry.UTC().Format(time.RFC3339),
				time.Until(tok.Expiry).Round(time.Second), tok.UseUntil.UTC().Format(time.RFC3339))
			// Whom the token stands for, from the provider (never the token).
			if id, ok := minter.(token.Identifier); ok {
				who, err := id.Identity(ctx, tok.Value)
				if err != nil {
					report("warn", "token", "identity not resolved: %s", redactToken(err.Error(), tok.Value))
				} else {
					report("ok", "token", "identity: %s", redactToken(who, tok.Value))
				}
			}
		}
	}

	var dialer *backend.Dialer
	if tokens != nil {
		dialer, err = backend.NewDialer(b, tokens)
	} else {
		dialer, err = backend.NewDialer(b, nil)
	}
	if err != nil {
		report("fail", "backend", "%v", err)
		return exitFailed
	}
	probe, err := dialer.Probe(ctx)
	switch {
	case err != nil:
		step := "dial"
		var tlsErr *backend.TLSError
		if errors.As(err, &tlsErr) {
			report("ok", "dial", "%s accepts connections", probe.Addr)
			step = "tls"
		}
		report("fail", step, "%v", err)
		failed = true
	default:
		report("ok", "dial", "%s accepts connections (%s)", probe.Addr, probe.Elapsed.Round(time.Millisecond))
		if probe.TLS == nil {
			report("warn", "tls", "plaintext: the server did not take TLS (GATEKEEPER_BACKEND_TLS_MODE=%s)", b.TLSMode)
		} else {
			report("ok", "tls", "%s", describeTLS(b, probe.TLS))
		}
	}

	// The auth query needs the server, not -user's password: a failed
	// auth step does not skip it.
	reachable := !failed
	switch {
	case failed:
		report("skip", "auth", "an earlier step failed")
	case *user == "":
		report("skip", "auth", "give -user ROLE (and -database DB) to authenticate")
	default:
		password := ""
		if tokens == nil {
			password = environMap(environ)["PGPASSWORD"]
		}
		conn, err := dialer.Dial(ctx, backend.Params{User: *user, Database: *database, Password: password})
		if err != nil {
			report("fail", "auth", "%v", err)
			failed = true
			break
		}
		report("ok", "auth", "authenticated as %q to database %q (server %s, backend pid %d)",
			*user, *database, conn.ParameterStatus()["server_version"], conn.PID())
		conn.Close()
	}
	if cfg.Wire.AuthUser != "" {
		// What a client named -user (else the auth role itself) would get
		// from the auth query: its role, its function, the secret's kind.
		who := *user
		if who == "" {
			who = cfg.Wire.AuthUser
		}
		if !reachable {
			report("skip", "authq", "an earlier step failed")
		} else if msg, err := wire.CheckAuthQuery(cfg.Wire, dialer, who); err != nil {
			report("fail", "authq", "%v", err)
			failed = true
		} else {
			report("ok", "authq", "%s", msg)
		}
	}
	if failed {
		return exitFailed
	}
	return exitOK
}

func modeName(b backend.Config) string {
	switch p := b.Token.ProviderName(); p {
	case "":
	case token.ProviderCommand:
		return "token mode (GATEKEEPER_BACKEND_TOKEN_CMD)"
	default:
		return "token mode (GATEKEEPER_BACKEND_TOKEN_PROVIDER=" + p + ")"
	}
	return "pass-through mode (the client's password)"
}

// describeTLS says what was negotiated and what was verified.
func describeTLS(b backend.Config, st *tls.ConnectionState) string {
	var chain []string
	for _, cert := range st.PeerCertificates {
		chain = append(chain, certName(cert))
	}
	issuer := ""
	if n := len(st.PeerCertificates); n > 0 {
		issuer = st.PeerCertificates[n-1].Issuer.String()
	}
	verified := "certificate not verified (encryption only)"
	switch {
	case b.TLSMode == backend.TLSVerifyFull:
		name := b.TLSServerName
		if name == "" {
			name = b.Host
		}
		verified = fmt.Sprintf("chain verified against %s, name %q verified", b.TLSCAFile, name)
	case b.TLSCAFile != "":
		verified = fmt.Sprintf("chain verified against %s, name not checked", b.TLSCAFile)
	}
	return fmt.Sprintf("%s, %s; chain: %s (issued by %s)", tls.VersionName(st.Version), verified, strings.Join(chain, " <- "), issuer)
}

func certName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

// redactToken keeps a token out of what check prints, whatever an SDK's
// error text happens to quote.
func redactToken(s, tok string) string {
	if tok == "" {
		return s
	}
	return strings.ReplaceAll(s, tok, "[REDACTED]")
}
