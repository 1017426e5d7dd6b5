package wire_test

import (
	"errors"
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
