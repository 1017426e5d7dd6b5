package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// TestCheckAgainstCluster runs `querycop check` as an operator would after
// a failed smoke test: every step ok against a good configuration, and the
// documented TLS text with a wrong CA.
func TestCheckAgainstCluster(t *testing.T) {
	c := pgtest.Require(t)
	tokenCmd, err := filepath.Abs("../../testdata/tokencmd/print-password.sh")
	if err != nil {
		t.Fatal(err)
	}
	env := func(caFile string) []string {
		return []string{
			"GATEKEEPER_BACKEND_HOST=localhost",
			fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
			"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
			"GATEKEEPER_BACKEND_TLS_CA_FILE=" + caFile,
			"GATEKEEPER_BACKEND_TOKEN_CMD=" + tokenCmd,
		}
	}
	run := func(caFile string) (int, string) {
		var out, errb bytes.Buffer
		code := runCheck(context.Background(), []string{"-user", pgtest.UserSCRAM, "-database", pgtest.Database}, env(caFile), &out, &errb)
		return code, out.String() + errb.String()
	}

	code, out := run(c.CA.CertFile)
	if code != exitOK {
		t.Fatalf("check exited %d:\n%s", code, out)
	}
	for _, step := range []string{"config", "token", "dial", "tls", "auth"} {
		if !strings.Contains(out, fmt.Sprintf("ok    %-7s ", step)) {
			t.Errorf("no ok line for %s:\n%s", step, out)
		}
	}
	for _, want := range []string{`name "localhost" verified`, "TLS 1.3", fmt.Sprintf("authenticated as %q", pgtest.UserSCRAM)} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, pgtest.PassSCRAM) {
		t.Error("check printed the token")
	}

	code, out = run(c.OtherCA.CertFile)
	if code != exitFailed || !strings.Contains(out, "fail  tls     backend TLS negotiation failed: x509: certificate signed by unknown authority") {
		t.Errorf("with a wrong CA: exit %d, want %d and the documented TLS failure:\n%s", code, exitFailed, out)
	}
	if !strings.Contains(out, "skip  auth") {
		t.Errorf("auth should be skipped after a failed step:\n%s", out)
	}
}

var checkAuthSetup sync.Once

// TestCheckAuthQuery: `querycop check` runs the auth query as a login
// would, set up exactly as docs/security.md says, and names what failed.
func TestCheckAuthQuery(t *testing.T) {
	c := pgtest.Require(t)
	const authPass = "check-auth-secret"
	sql, err := testkit.AuthQuerySQL("../../docs", authPass)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	checkAuthSetup.Do(func() { err = c.Exec(ctx, sql) }) // once per cluster (-count)
	if err != nil {
		t.Fatalf("the docs' auth query SQL: %v", err)
	}
	run := func(extra ...string) (int, string) {
		env := append([]string{
			"GATEKEEPER_BACKEND_HOST=localhost",
			fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
			"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
			"GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
			"GATEKEEPER_AUTH_PASSWORD=" + authPass,
		}, extra...)
		var out, errb bytes.Buffer
		code := runCheck(context.Background(), []string{"-user", pgtest.UserSCRAM, "-database", pgtest.Database},
			append(env, "PGPASSWORD="+pgtest.PassSCRAM), &out, &errb)
		return code, out.String() + errb.String()
	}

	code, out := run("GATEKEEPER_AUTH_USER=querycop_auth")
	if code != exitOK || !strings.Contains(out, fmt.Sprintf(`ok    authq   ran as "querycop_auth" in database "postgres": user "%s" has a SCRAM secret`, pgtest.UserSCRAM)) {
		t.Errorf("exit %d, want an ok authq line:\n%s", code, out)
	}
	code, out = run("GATEKEEPER_AUTH_USER=no_such_auth_role")
	if code != exitFailed || !strings.Contains(out, `fail  authq   querycop cannot look up passwords: its auth query role GATEKEEPER_AUTH_USER "no_such_auth_role" cannot log in`) {
		t.Errorf("exit %d, want a failed authq line naming the role:\n%s", code, out)
	}
	// Without -user's password the auth step fails, but the auth query,
	// which does not need it, still runs.
	var o, e bytes.Buffer
	code = runCheck(context.Background(), []string{"-user", pgtest.UserSCRAM, "-database", pgtest.Database}, []string{
		"GATEKEEPER_BACKEND_HOST=localhost", fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full", "GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
		"GATEKEEPER_AUTH_USER=querycop_auth", "GATEKEEPER_AUTH_PASSWORD=" + authPass}, &o, &e)
	if out := o.String(); code != exitFailed || !strings.Contains(out, "fail  auth") || !strings.Contains(out, "ok    authq") {
		t.Errorf("without PGPASSWORD: exit %d, want auth failed and authq ok:\n%s%s", code, out, e.String())
	}
	if strings.Contains(out, authPass) || strings.Contains(out, "SCRAM-SHA-256$") {
		t.Error("check printed a password or a secret")
	}
}
