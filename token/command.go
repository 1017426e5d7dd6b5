package token

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// maxStdout caps the captured stdout; a larger output is a failure.
	maxStdout = 64 << 10
	// maxStderr caps the captured stderr; the rest is discarded.
	maxStderr = 16 << 10
	// defaultTimeout is used when Config.Timeout is not positive
	// (the environment default is the same).
	defaultTimeout = 30 * time.Second
	// waitDelay bounds how long Wait waits for stdout/stderr to close after
	// the command exited or was killed, in case a process that escaped the
	// process group still holds them open.
	waitDelay = 2 * time.Second

	redacted = "[REDACTED]"
)

// The variables through which the command learns which connection the token
// is for. They override inherited values of the same names.
const (
	EnvHost     = "QUERYCOP_BACKEND_HOST"
	EnvPort     = "QUERYCOP_BACKEND_PORT"
	EnvUser     = "QUERYCOP_BACKEND_USER"
	EnvDatabase = "QUERYCOP_BACKEND_DATABASE"
)

// Target describes the backend connection a token is minted for.
type Target struct {
	Host     string
	Port     int
	User     string
	Database string
}

// Command mints tokens by running Config.Cmd. Safe for concurrent use.
type Command struct {
	cmd     string
	timeout time.Duration
}

// NewCommand returns a Command running cfg.Cmd. A Timeout that is not
// positive means the default of 30s.
func NewCommand(cfg Config) *Command {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &Command{cmd: cfg.Cmd, timeout: timeout}
}

// Error is every failure of the token command. Its Error() text is exactly
// "backend token command failed: " + Reason, a documented text that
// operators grep for. Neither Reason nor Err contains the token.
type Error struct {
	// Reason says what went wrong, e.g. the first line the command wrote
	// on stderr, "timed out after 30s" or "command printed nothing on stdout".
	Reason string
	// Err is the underlying error, if any: an *exec.ExitError,
	// context.DeadlineExceeded on timeout, the caller's context error on
	// cancellation, or the error starting sh.
	Err error
	// Provider is set for the built-in providers (azure, aws-rds, gcp),
	// whose failures read "backend token provider failed: <provider>: "
	// + Reason instead.
	Provider string
}

func (e *Error) Error() string {
	if e.Provider != "" && e.Provider != ProviderCommand {
		return "backend token provider failed: " + e.Provider + ": " + e.Reason
	}
	return "backend token command failed: " + e.Reason
}

func (e *Error) Unwrap() error { return e.Err }

// errTimeout is the cause of the per-run context when Config.Timeout fires,
// telling it apart from a cancellation or deadline of the caller's context.
var errTimeout = errors.New("token command timed out")

// Mint runs the command once for t and returns its trimmed stdout.
//
// The command runs as `sh -c Cmd` with empty stdin, the gateway's
// environment plus the QUERYCOP_BACKEND_* variables describing t, in its own
// process group. When the timeout fires or ctx is done, the whole process
// group is killed with SIGKILL and reaped before Mint returns; so is what
// is left of the group once the shell has exited.
func (c *Command) Mint(ctx context.Context, t Target) (string, error) {
	if c.cmd == "" {
		return "", &Error{Reason: "no token command configured"}
	}
	if err := ctx.Err(); err != nil {
		return "", &Error{Reason: "canceled: " + err.Error(), Err: err}
	}

	runCtx, cancel := context.WithTimeoutCause(ctx, c.timeout, errTimeout)
	defer cancel()

	stdout := &cappedBuffer{limit: maxStdout, failOnOverflow: true}
	stderr := &cappedBuffer{limit: maxStderr}

	cmd := exec.CommandContext(runCtx, "sh", "-c", c.cmd)
	cmd.Env = commandEnv(os.Environ(), t)
	cmd.Stdin = nil // /dev/null
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay

	if err := cmd.Start(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return "", &Error{Reason: "canceled: " + ctxErr.Error(), Err: ctxErr}
		}
		return "", &Error{Reason: err.Error(), Err: err}
	}
	pgid := cmd.Process.Pid
	running.add(pgid)
	err := cmd.Wait()
	// The shell has exited (and, past WaitDelay, something it started may
	// still hold stdout or stderr open). Whatever it started in the
	// background is left in its process group, where nothing else would
	// ever end it, not even the gateway's shutdown: kill the group now.
	// (Its ID cannot have been reused while any member lives; an empty
	// group's is not reused this soon, short of a PID wrap-around.)
	_ = killGroup(pgid)
	running.remove(pgid)

	out := stdout.String()
	token := strings.TrimSpace(out)
	// Whatever the command wrote may hold a credential: the token itself
	// on the wrong stream, or in a line next to an error. What a client,
	// the log or the admin API is shown passes through safeLine.
	stderrLine := safeLine(firstLine(stderr.Bytes()), out)

	switch {
	case stdout.overflowed:
		return "", &Error{Reason: fmt.Sprintf("output larger than %d KiB", maxStdout>>10), Err: err}

	case err != nil && runCtx.Err() != nil:
		if context.Cause(runCtx) == errTimeout {
			return "", &Error{Reason: "timed out after " + c.timeout.String(), Err: context.DeadlineExceeded}
		}
		ctxErr := ctx.Err()
		if ctxErr == nil { // cannot happen: runCtx is done only by timeout or ctx
			ctxErr = runCtx.Err()
		}
		return "", &Error{Reason: "canceled: " + ctxErr.Error(), Err: ctxErr}
	}

	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		reason := stderrLine
		if reason == "" {
			reason = exitErr.Error() // "exit status N" or "signal: ..."
		}
		if exitErr.ExitCode() == 127 {
			// sh could not find the command. Also say it the way the
			// operator's cookbook spells it, so both texts can be grepped.
			reason += " (executable file not found in $PATH)"
		}
		return "", &Error{Reason: reason, Err: err}
	}
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		// An I/O error copying the output, or the like.
		return "", &Error{Reason: safeLine(err.Error(), out), Err: err}
	}

	if token == "" {
		reason := "command printed nothing on stdout"
		if stderrLine != "" {
			reason += " (stderr: " + stderrLine + ")"
		}
		return "", &Error{Reason: reason}
	}
	if n := strings.Count(token, "\n") + 1; n > 1 {
		// Not a token: a warning or a second value printed with it.
		return "", &Error{Reason: fmt.Sprintf("command printed %d lines on stdout; it must print the token alone", n)}
	}
	return token, nil
}

// running holds the process groups of the commands running now, for
// KillRunning.
var running = &groups{pgids: map[int]struct{}{}}

type groups struct {
	mu     sync.Mutex
	pgids  map[int]struct{}
	killed bool // KillRunning was called: kill each new group at once
}

func (g *groups) add(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.killed {
		_ = killGroup(pgid)
		return
	}
	g.pgids[pgid] = struct{}{}
}

func (g *groups) remove(pgid int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.pgids, pgid)
}

// KillRunning kills with SIGKILL the process group of every token command
// running now, and of any started after it. It is for a process about to
// exit without its orderly shutdown (a second signal during the drain): the
// commands run in process groups of their own, which neither that signal
// nor the terminal's Ctrl-C reaches, so they would run on after the exit.
func KillRunning() {
	running.mu.Lock()
	defer running.mu.Unlock()
	running.killed = true
	for pgid := range running.pgids {
		_ = killGroup(pgid)
	}
}

// killGroup kills the process group pgid with SIGKILL. A group that no
// longer exists is reported as os.ErrProcessDone, as exec.Cmd.Cancel expects.
func killGroup(pgid int) error {
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// commandEnv returns environ without inherited QUERYCOP_BACKEND_{HOST,PORT,
// USER,DATABASE} and with them set from t.
func commandEnv(environ []string, t Target) []string {
	target := [...]string{
		EnvHost + "=" + t.Host,
		EnvPort + "=" + strconv.Itoa(t.Port),
		EnvUser + "=" + t.User,
		EnvDatabase + "=" + t.Database,
	}
	env := make([]string, 0, len(environ)+len(target))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case EnvHost, EnvPort, EnvUser, EnvDatabase:
			continue
		}
		env = append(env, kv)
	}
	return append(env, target[:]...)
}

// firstLine returns the first line of b that is not blank, trimmed.
func firstLine(b []byte) string {
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if s := strings.TrimSpace(string(line)); s != "" {
			return s
		}
	}
	return ""
}

// errOutputTooLarge stops copying stdout once it exceeds its cap; the
// command then gets EPIPE/SIGPIPE on its next write.
var errOutputTooLarge = errors.New("output too large")

// cappedBuffer keeps at most limit bytes. Past the limit it either fails the
// write (stdout: the output is unusable) or silently discards (stderr: only
// its first line matters).
type cappedBuffer struct {
	buf            bytes.Buffer
	limit          int
	failOnOverflow bool
	overflowed     bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.buf.Len()
	if len(p) <= room {
		return b.buf.Write(p)
	}
	b.overflowed = true
	if room > 0 {
		b.buf.Write(p[:room])
	}
	if b.failOnOverflow {
		return room, errOutputTooLarge
	}
	return len(p), nil
}

func (b *cappedBuffer) Bytes() []byte  { return b.buf.Bytes() }
func (b *cappedBuffer) String() string { return b.buf.String() }
