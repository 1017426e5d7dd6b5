package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/querycop/querycop/internal/pgtest"
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
