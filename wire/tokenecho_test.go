package wire_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgtest"
)

// TestTokenCommandNeverEchoes: commands that print the token where they
// should not (issue 15's cases). The client's FATAL must not hold it, nor
// the gateway's log (checked by tokEnv for every token it made), and the
// text stays one bounded line.
func TestTokenCommandNeverEchoes(t *testing.T) {
	c := pgtest.Require(t)
	tests := []struct {
		name string
		cmd  string // $TOK is the role's token file
		want string // start of the client's message
	}{
		{"token on stderr, stdout empty", `cat "$TOK" >&2`,
			"backend token command failed: command printed nothing on stdout (stderr: [REDACTED])"},
		{"token and another stdout line, failing", `cat "$TOK"; echo "WARNING: using cached token"; echo "failed after printing $(cat "$TOK")" >&2; exit 1`,
			"backend token command failed: failed after printing [REDACTED]"},
		{"token and another stdout line, exit 0", `cat "$TOK"; echo "WARNING: using cached token"`,
			"backend token command failed: command printed 2 lines on stdout; it must print the token alone"},
		{"a 16 KiB stderr line", `printf '/opt/scripts/token.sh: %s\n' "$(yes word | head -c 16384 | tr '\n' ' ')" >&2; exit 1`,
			"backend token command failed: /opt/scripts/token.sh: word word"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const role = "tok_echo"
			env := newTokEnv(t, c)
			tok := env.createRole(role, time.Now().Add(time.Hour))
			cfg := tokenBackendConfig(c, "jwt-from-dir.sh")
			cfg.Token.Cmd = `TOK="$TOKENCMD_TOKEN_DIR/$QUERYCOP_BACKEND_USER"; ` + tt.cmd
			g := startGateway(t, cfg)
			env.watch(g)
			_, _, err := tokSession(g, role)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" {
				t.Fatalf("client got %v, want a FATAL error", err)
			}
			msg := pgErr.Message
			if strings.Contains(msg, tok) || strings.Contains(msg, strings.Split(tok, ".")[1]) {
				t.Errorf("the client's FATAL holds the token: %q", msg)
			}
			if !strings.HasPrefix(msg, tt.want) || strings.ContainsAny(msg, "\r\n") || len(msg) > 400 {
				t.Errorf("client's message (%d bytes) = %q; want one line of at most 400 bytes starting %q", len(msg), msg, tt.want)
			}
			if !tokHasWarn(g.log.String(), msg) {
				t.Errorf("no WARN log line with the client's text %q", msg)
			}
		})
	}
}

// TestTokenUnknownUsersCostOneRunEach: in token mode without an auth file a
// client picks the user name. Logins as 20 names the command fails for cost
// one run each: no background retries follow (they were 140 runs and 140
// WARN lines in 80s), and every client is refused with the command's error.
func TestTokenUnknownUsersCostOneRunEach(t *testing.T) {
	c := pgtest.Require(t)
	env := newTokEnv(t, c)
	g := startGateway(t, tokenBackendConfig(c, "print-password.sh"))
	env.watch(g)
	const users = 20
	for i := range users {
		_, _, err := tokSession(g, fmt.Sprintf("nobody_%d", i))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Message, "backend token command failed: no password known for role nobody_") {
			t.Fatalf("login as an unknown user: %v", err)
		}
	}
	time.Sleep(3 * time.Second) // the first background retry would have come after 1s
	if runs := env.runs(); len(runs) != users {
		t.Errorf("the command ran %d times for %d failed logins, want %d: no background retries for keys nobody needs", len(runs), users, users)
	}
	if n := strings.Count(g.log.String(), "background token refresh failed"); n != 0 {
		t.Errorf("%d background refresh WARN lines for keys nobody needs, want 0", n)
	}
}
