package token

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The cases of issue 15's point 3: a credential the command printed must
// not reach the failure text (which the client's FATAL, the WARN log line
// and /v1/token's last_error all show), wherever the command printed it.
func TestMintNeverEchoesCredentials(t *testing.T) {
	t.Parallel()
	jwt := jwtExpiringAt(time.Now().Add(time.Hour), "echo-case")
	const opaque = "opaque-4f6c1b9e0d2a7c3b5e8f1a2d4c6b8e0f"           // hex run
	const ya29 = "ya29.a0AfB_byC3kLmN0pQrStUvWxYz12345678AbCdEfGhIjKl" // Google-style, mixed
	const rdsToken = "db.example.com:5432/?Action=connect&DBUser=app&X-Amz-Signature=3f2a9c1d5e7b8f0a4c6d2e1f3a5b7c9d0e2f4a6b8c0d1e3f5a7b9c2d4e6f8a0b"
	const stdoutOnly = "Zq7secretQ9" // short: only stdout masking can catch it
	tests := []struct {
		name    string
		cmd     string
		secrets []string
		want    string // the whole error text, when it is known exactly
	}{
		{
			name:    "JWT on stderr, stdout empty",
			cmd:     `echo "` + jwt + `" >&2`,
			secrets: []string{jwt},
			want:    "backend token command failed: command printed nothing on stdout (stderr: [REDACTED])",
		},
		{
			name:    "opaque token on stderr, stdout empty",
			cmd:     `echo "` + opaque + `" >&2`,
			secrets: []string{opaque, opaque[7:]},
			want:    "backend token command failed: command printed nothing on stdout (stderr: [REDACTED])",
		},
		{
			name:    "Google-style token on stderr, exit 1",
			cmd:     `echo "got ` + ya29 + ` then failed" >&2; exit 1`,
			secrets: []string{ya29, ya29[5:]},
			want:    "backend token command failed: got ya29.[REDACTED] then failed",
		},
		{
			name:    "RDS token on stderr, exit 1",
			cmd:     `echo "signed: ` + rdsToken + `" >&2; exit 1`,
			secrets: []string{rdsToken, rdsToken[len(rdsToken)-64:]},
		},
		{
			name:    "token and another stdout line, command fails",
			cmd:     `echo ` + stdoutOnly + `; echo "WARNING: something"; echo "cannot use ` + stdoutOnly + `: WARNING: something" >&2; exit 1`,
			secrets: []string{stdoutOnly},
			want:    "backend token command failed: cannot use [REDACTED]: [REDACTED]",
		},
		{
			name:    "token and another stdout line, exit 0",
			cmd:     `echo ` + stdoutOnly + `; echo "note: ` + stdoutOnly + `"`,
			secrets: []string{stdoutOnly},
			want:    "backend token command failed: command printed 2 lines on stdout; it must print the token alone",
		},
		{
			name:    "half a JWT on stderr",
			cmd:     `echo "token: ` + jwt[:30] + `" >&2; exit 1`,
			secrets: []string{jwt[:30]},
			want:    "backend token command failed: token: [REDACTED]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := mint(t, Config{Cmd: tt.cmd}, target)
			if err == nil {
				t.Fatal("Mint succeeded, want an error")
			}
			text := err.Error()
			for _, s := range tt.secrets {
				if strings.Contains(text, s) {
					t.Errorf("error echoes a credential %q: %q", s, text)
				}
			}
			if tt.want != "" && text != tt.want {
				t.Errorf("error = %q\nwant    %q", text, tt.want)
			}
			// What /v1/token serves is the same text.
			src := NewSource(Config{Cmd: tt.cmd, Timeout: defaultTimeout, Lifetime: 15 * time.Minute, Reuse: true}, NewCommand(Config{Cmd: tt.cmd}))
			defer src.Close()
			_, _ = src.Token(context.Background(), target)
			out, _ := json.Marshal(src.Status())
			for _, s := range tt.secrets {
				if strings.Contains(string(out), s) {
					t.Errorf("/v1/token's status echoes a credential %q: %s", s, out)
				}
			}
		})
	}
}

// The text from the command is one line of at most maxReason bytes (plus
// the fixed words around it), keeps an AADSTS code the cut would lose, and
// has no control characters.
func TestMintFailureTextBounded(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("word ", 4000) // 20 KB, beyond the 16 KiB stderr cap
	tests := []struct {
		name, cmd string
		check     func(t *testing.T, reason string)
	}{
		{"16 KiB line", `echo "/opt/tool/bin/helper.sh: line 3: ` + long + `" >&2; exit 1`, func(t *testing.T, r string) {
			if !strings.HasPrefix(r, "/opt/tool/bin/helper.sh: line 3: word word") || !strings.HasSuffix(r, "…") {
				t.Errorf("reason = %q, want the start of the line, cut with …", r)
			}
		}},
		{"AADSTS code past the cut", `echo "ERROR: ` + strings.Repeat("x ", 200) + `AADSTS50173: The provided grant has expired." >&2; exit 1`, func(t *testing.T, r string) {
			if !strings.HasSuffix(r, "… (AADSTS50173)") {
				t.Errorf("reason = %q, want it to end with … (AADSTS50173)", r)
			}
		}},
		{"control characters", `printf 'ERROR:\033[31m AADSTS700082:\r bad\tthing\n' >&2; exit 1`, func(t *testing.T, r string) {
			if r != "ERROR: [31m AADSTS700082:  bad thing" {
				t.Errorf("reason = %q", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := mint(t, Config{Cmd: tt.cmd}, target)
			var tokErr *Error
			if err == nil || !errorsAs(err, &tokErr) {
				t.Fatalf("Mint = %v, want *Error", err)
			}
			r := tokErr.Reason
			if len(r) > maxReason+len("… (AADSTS0000000000)") || strings.ContainsAny(r, "\n\r\x1b") || !utf8.ValidString(r) {
				t.Errorf("reason of %d bytes is not one bounded clean line: %q", len(r), r)
			}
			tt.check(t, r)
		})
	}
}

func errorsAs(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

// Lines real commands print on failure keep what an operator needs.
func TestSafeLineKeepsUsefulText(t *testing.T) {
	t.Parallel()
	for _, line := range []string{
		"ERROR: AADSTS700082: The refresh token has expired due to inactivity. Trace ID: 1f4c9a2e-7b3d-4e1f-9a2c-5d6e7f8a9b0c Correlation ID: 0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d Timestamp: 2026-05-20 10:11:12Z",
		"ERROR: (pii). Status: Response_Status.Status_InteractionRequired, Error code: 3399614476",
		"sh: 1: gcloud: not found",
		"/usr/local/bin/get-token.sh: line 12: /var/run/secrets/azure/tokens/azure-identity-token: No such file or directory",
		"An error occurred (ExpiredToken) when calling the GenerateDBAuthToken operation: The security token included in the request is expired",
		"ERROR: (gcloud.sql.generate-login-token) There was a problem refreshing your current auth tokens: ('invalid_grant: Bad Request', {'error': 'invalid_grant'})",
	} {
		if got := safeLine(line, ""); got != line {
			t.Errorf("safeLine changed a harmless line:\n got %q\nwant %q", got, line)
		}
	}
}

var (
	checkJWT = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{7,}`)
	checkHex = regexp.MustCompile(`[0-9A-Fa-f]{32,}`)
)

func FuzzSafeLine(f *testing.F) {
	f.Add("ERROR: AADSTS700082: The refresh token has expired due to inactivity.", "")
	f.Add("token eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDB9.c2ln rejected", "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDB9.c2ln")
	f.Add("cannot use abc123: WARNING: x", "abc123\nWARNING: x\n")
	f.Add("sig=3f2a9c1d5e7b8f0a4c6d2e1f3a5b7c9d0e2f4a6b8c0d1e3f5a7b9c2d4e6f8a0b", "")
	f.Add(strings.Repeat("é", 400)+"AADSTS50173", "")
	f.Add("a\x00b\xffc\r\nd", "a\x00b")
	f.Fuzz(func(t *testing.T, line, stdout string) {
		got := safeLine(line, stdout)
		if strings.ContainsAny(got, "\n\r") || !utf8.ValidString(got) {
			t.Fatalf("safeLine(%q, %q) = %q: not one valid line", line, stdout, got)
		}
		if len(got) > maxReason+len("… ()")+len(errorCode.FindString(line)) {
			t.Fatalf("safeLine returned %d bytes, more than the bound", len(got))
		}
		// Masks stand for nothing: replace them with a character that
		// joins no run before looking for what must not be there.
		bare := strings.ReplaceAll(got, redacted, "\x00")
		for l := range strings.Lines(stdout) {
			for _, p := range append(strings.Fields(l), strings.TrimSpace(l)) {
				if len(p) >= minStdoutLen && !strings.Contains(redacted, p) && strings.Contains(bare, p) {
					t.Fatalf("safeLine(%q, %q) = %q still holds %q from stdout", line, stdout, got, p)
				}
			}
		}
		for _, re := range []*regexp.Regexp{checkJWT, checkHex} {
			if m := re.FindString(bare); m != "" {
				t.Fatalf("safeLine(%q) = %q still holds %q", line, got, m)
			}
		}
		for _, m := range opaqueRun.FindAllString(bare, -1) {
			if guidOnly.MatchString(m) {
				continue
			}
			if len(m) >= opaqueAlways || (len(m) >= opaqueMixed && hasLetterAndDigit(m)) {
				t.Fatalf("safeLine(%q) = %q still holds the opaque run %q", line, got, m)
			}
		}
	})
}
