package token

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/testkit"
)

// script returns the path of a test token command, relative to the package
// directory in which go test runs.
func script(name string) string {
	return filepath.Join("..", "testdata", "tokencmd", name)
}

var target = Target{Host: "db.example.com", Port: 6432, User: "u_scram", Database: "app"}

func mint(t *testing.T, cfg Config, tg Target) (string, error) {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return NewCommand(cfg).Mint(context.Background(), tg)
}

func TestMintSuccess(t *testing.T) {
	tests := []struct {
		name   string
		cmd    string
		target Target
		want   string
	}{
		{"scram", script("print-password.sh"), Target{User: "u_scram"}, "scram-secret"},
		{"md5", script("print-password.sh"), Target{User: "u_md5"}, "md5-secret"},
		{"password", script("print-password.sh"), Target{User: "u_password"}, "plain-secret"},
		{"trust", script("print-password.sh"), Target{User: "u_trust"}, "unused"},
		{"trims surrounding whitespace", `printf '  \n\t tok en \r\n\n'`, target, "tok en"},
		{"ignores stderr on success", `echo warning >&2; echo tok`, target, "tok"},
		{"target env vars", script("echo-env.sh"), target, "db.example.com:6432:u_scram:app"},
		{"stdin is empty", `cat; echo tok`, target, "tok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := mint(t, Config{Cmd: tt.cmd}, tt.target)
			if err != nil {
				t.Fatalf("Mint: %v", err)
			}
			if got != tt.want {
				t.Errorf("Mint = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMintInheritsEnvironment(t *testing.T) {
	t.Setenv("TOKENCMD_TEST_INHERITED", "inherited-value")
	// Inherited values of the target variables are overridden.
	t.Setenv(EnvUser, "stale-user")
	t.Setenv(EnvPort, "1")

	got, err := mint(t, Config{Cmd: `echo "$TOKENCMD_TEST_INHERITED"`}, target)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if got != "inherited-value" {
		t.Errorf("Mint = %q, want %q", got, "inherited-value")
	}

	got, err = mint(t, Config{Cmd: script("echo-env.sh")}, target)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if want := "db.example.com:6432:u_scram:app"; got != want {
		t.Errorf("Mint = %q, want %q", got, want)
	}

	got, err = mint(t, Config{Cmd: `env | grep -c '^QUERYCOP_BACKEND_USER='`}, target)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if got != "1" {
		t.Errorf("QUERYCOP_BACKEND_USER appears %s times in the environment, want 1", got)
	}
}

func TestMintFailures(t *testing.T) {
	const prefix = "backend token command failed: "
	tests := []struct {
		name     string
		cmd      string
		target   Target
		want     string   // exact error text, if set
		contains []string // substrings of the error text
		exitCode int      // if non-zero, Err must be an *exec.ExitError with this code
	}{
		{
			name:     "AADSTS",
			cmd:      script("fail-aadsts.sh"),
			want:     prefix + "AADSTS700082: The refresh token has expired due to inactivity.",
			exitCode: 1,
		},
		{
			name:     "unknown role",
			cmd:      script("print-password.sh"),
			target:   Target{User: "u_nobody"},
			want:     prefix + "no password known for role u_nobody",
			exitCode: 1,
		},
		{
			name:     "blank stderr lines skipped",
			cmd:      `printf '\n  \n  first real line  \nsecond\n' >&2; exit 2`,
			want:     prefix + "first real line",
			exitCode: 2,
		},
		{
			name:     "exit status without stderr",
			cmd:      `exit 3`,
			want:     prefix + "exit status 3",
			exitCode: 3,
		},
		{
			name: "empty output",
			cmd:  script("empty.sh"),
			want: prefix + "command printed nothing on stdout",
		},
		{
			name: "whitespace-only output with stderr",
			cmd:  `echo '   '; echo 'login required' >&2`,
			want: prefix + "command printed nothing on stdout (stderr: login required)",
		},
		{
			name:     "not executable",
			cmd:      script("not-executable.sh"),
			contains: []string{prefix, "Permission denied"},
			exitCode: 126,
		},
		{
			name:     "missing executable",
			cmd:      "no-such-binary-xyz --resource-type oss-rdbms",
			contains: []string{prefix, "no-such-binary-xyz", "not found", "executable file not found in $PATH"},
			exitCode: 127,
		},
		{
			name: "output too large",
			cmd:  `yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa`,
			want: prefix + "output larger than 64 KiB",
		},
		{
			name: "output too large then exit 0",
			cmd:  `head -c 70000 /dev/zero | tr '\0' a`,
			want: prefix + "output larger than 64 KiB",
		},
		{
			name: "no command configured",
			cmd:  "",
			want: prefix + "no token command configured",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, err := mint(t, Config{Cmd: tt.cmd}, tt.target)
			if err == nil {
				t.Fatalf("Mint = %q, want an error", tok)
			}
			if tok != "" {
				t.Errorf("Mint returned token %q with error", tok)
			}
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("error %T %v is not a *token.Error", err, err)
			}
			if got := err.Error(); got != prefix+te.Reason {
				t.Errorf("Error() = %q, want prefix + Reason %q", got, te.Reason)
			}
			if tt.want != "" && err.Error() != tt.want {
				t.Errorf("error = %q\nwant    %q", err.Error(), tt.want)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err.Error(), s)
				}
			}
			if tt.exitCode != 0 {
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("error %v does not wrap an *exec.ExitError", err)
				}
				if ee.ExitCode() != tt.exitCode {
					t.Errorf("exit code = %d, want %d", ee.ExitCode(), tt.exitCode)
				}
			}
		})
	}
}

func TestMintRedactsTokenFromStderr(t *testing.T) {
	const secret = "eyJ0eXAiOiJKV1QiLCJhbGciOi.secret"
	tests := []struct {
		name string
		cmd  string
		want string
	}{
		{
			name: "non-zero exit",
			cmd:  `echo ` + secret + `; echo "token ` + secret + ` rejected, ` + secret + `" >&2; exit 1`,
			want: "backend token command failed: token [REDACTED] rejected, [REDACTED]",
		},
		{
			name: "127",
			cmd:  `echo ` + secret + `; echo "sh: 1: ` + secret + `: not found" >&2; exit 127`,
			want: "backend token command failed: sh: 1: [REDACTED]: not found (executable file not found in $PATH)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := mint(t, Config{Cmd: tt.cmd}, target)
			if err == nil {
				t.Fatal("Mint succeeded, want an error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error leaks the token: %q", err.Error())
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q\nwant    %q", err.Error(), tt.want)
			}
		})
	}
}

func TestMintTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	cmd := fmt.Sprintf("TOKENCMD_PID_FILE=%s %s", pidFile, script("hang.sh"))
	c := NewCommand(Config{Cmd: cmd, Timeout: 500 * time.Millisecond})

	type result struct {
		tok string
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		tok, err := c.Mint(context.Background(), target)
		done <- result{tok, err}
	}()

	// While hang.sh runs, learn its process group (the group Mint created).
	pid, pgid := waitForPIDFile(t, pidFile)

	var res result
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Mint did not return within 5s of a 500ms timeout")
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("Mint took %v with a 500ms timeout", elapsed)
	}
	if res.err == nil {
		t.Fatalf("Mint = %q, want a timeout error", res.tok)
	}
	var te *Error
	if !errors.As(res.err, &te) {
		t.Fatalf("error %T %v is not a *token.Error", res.err, res.err)
	}
	if te.Reason != "timed out after 500ms" {
		t.Errorf("Reason = %q, want %q", te.Reason, "timed out after 500ms")
	}
	if want := "backend token command failed: timed out after 500ms"; res.err.Error() != want {
		t.Errorf("error = %q, want %q", res.err.Error(), want)
	}
	if !errors.Is(res.err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", res.err)
	}

	testkit.AssertGroupGone(t, pid, pgid)
}

func TestMintCallerCancelKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	cmd := fmt.Sprintf("TOKENCMD_PID_FILE=%s %s", pidFile, script("hang.sh"))
	c := NewCommand(Config{Cmd: cmd, Timeout: time.Minute})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Mint(ctx, target)
		done <- err
	}()
	pid, pgid := waitForPIDFile(t, pidFile)
	cancel()

	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Mint did not return within 5s of cancellation")
	}
	if want := "backend token command failed: canceled: context canceled"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v does not wrap context.Canceled", err)
	}
	testkit.AssertGroupGone(t, pid, pgid)
}

func TestMintAlreadyCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	countFile := filepath.Join(t.TempDir(), "count")
	cmd := fmt.Sprintf("TOKENCMD_COUNT_FILE=%s %s", countFile, script("print-password.sh"))
	_, err := NewCommand(Config{Cmd: cmd}).Mint(ctx, target)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want one wrapping context.Canceled", err)
	}
	if _, statErr := os.Stat(countFile); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("the command ran although ctx was already cancelled")
	}
}

func TestMintConcurrent(t *testing.T) {
	countFile := filepath.Join(t.TempDir(), "count")
	cmd := fmt.Sprintf("TOKENCMD_COUNT_FILE=%s %s", countFile, script("print-password.sh"))
	c := NewCommand(Config{Cmd: cmd, Timeout: 30 * time.Second})

	users := []struct{ user, want string }{
		{"u_scram", "scram-secret"},
		{"u_md5", "md5-secret"},
		{"u_password", "plain-secret"},
		{"u_trust", "unused"},
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		u := users[i%len(users)]
		wg.Go(func() {
			got, err := c.Mint(context.Background(), Target{Host: "h", Port: 5432, User: u.user, Database: "d"})
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: %v", u.user, err)
			case got != u.want:
				errs <- fmt.Errorf("%s: got %q, want %q", u.user, got, u.want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	data, err := os.ReadFile(countFile)
	if err != nil {
		t.Fatal(err)
	}
	if runs := strings.Count(string(data), "\n"); runs != n {
		t.Errorf("command ran %d times, want %d", runs, n)
	}
}

// waitForPIDFile waits for hang.sh to write its PID and returns it with the
// process group it runs in.
func waitForPIDFile(t *testing.T, path string) (pid, pgid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				t.Fatalf("bad PID file %q: %v", data, err)
			}
			st, ok := testkit.ReadProcStat(pid)
			if !ok {
				t.Fatalf("process %d from the PID file is already gone", pid)
			}
			if st.PGID == os.Getpid() || st.PGID == 0 {
				t.Fatalf("hang.sh runs in process group %d, not its own", st.PGID)
			}
			return pid, st.PGID
		}
		if time.Now().After(deadline) {
			t.Fatal("hang.sh did not write its PID file within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A command that exits 0 but leaves a background process holding stdout open
// must not block Mint forever (WaitDelay), and the leftover is killed.
func TestMintBackgroundChildHoldingStdout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	cmd := fmt.Sprintf(`echo tok; sleep 300 & echo $! >%s.tmp; mv %s.tmp %s`, pidFile, pidFile, pidFile)
	start := time.Now()
	got, err := NewCommand(Config{Cmd: cmd, Timeout: time.Minute}).Mint(context.Background(), target)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if got != "tok" {
		t.Errorf("Mint = %q, want %q", got, "tok")
	}
	if elapsed := time.Since(start); elapsed > waitDelay+3*time.Second {
		t.Errorf("Mint took %v", elapsed)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		st, ok := testkit.ReadProcStat(pid)
		if !ok || st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background sleep %d survived (state %c)", pid, st.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A command that exits 0 after starting a helper that does not hold its
// output (stdout and stderr redirected) must not leave the helper running:
// nothing else would ever end it, not even the gateway's shutdown.
func TestMintBackgroundChildNotHoldingOutput(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The shell is the leader of the group Mint made: $$ is its ID.
	cmd := fmt.Sprintf(`sleep 300 >/dev/null 2>&1 & echo "$! $$" >%s.tmp; mv %s.tmp %s; echo tok`, pidFile, pidFile, pidFile)
	got, err := NewCommand(Config{Cmd: cmd, Timeout: time.Minute}).Mint(context.Background(), target)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if got != "tok" {
		t.Errorf("Mint = %q, want %q", got, "tok")
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid, pgid int
	if _, err := fmt.Sscan(string(data), &pid, &pgid); err != nil || pgid == os.Getpid() {
		t.Fatalf("PID file %q: %v", data, err)
	}
	testkit.AssertGroupGone(t, pid, pgid)
}
