package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// TestStopDuringHangingTokenCommand: the gateway is stopped while its token
// command hangs (and has started a child of its own). When querycop has
// exited, no process of the command's group is left: it is not re-parented
// to init to run on.
func TestStopDuringHangingTokenCommand(t *testing.T) {
	c := pgtest.Require(t)
	hang, err := filepath.Abs("../../testdata/tokencmd/hang.sh")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	p := startQuerycop(t, c,
		"GATEKEEPER_BACKEND_HOST=localhost",
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE="+c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_CMD="+hang,
		"GATEKEEPER_SHUTDOWN_TIMEOUT=1s",
		"TOKENCMD_PID_FILE="+pidFile,
		"PATH="+os.Getenv("PATH"),
	)
	pid, pgid := startHangingMint(t, p, pidFile)
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, 15*time.Second); code != 0 {
		t.Errorf("querycop exited with status %d, want 0", code)
	}
	testkit.AssertGroupGone(t, pid, pgid)

	// Durations in the log carry their unit.
	lines := p.stderr.lines(t)
	if l := logLine(lines, "querycop started"); l == nil || l["pool_max_conn_lifetime"] != "50m0s" {
		t.Errorf("start-up line %v: want pool_max_conn_lifetime \"50m0s\"", l)
	}
	if l := logLine(lines, "shutting down: no new clients, waiting for sessions to end"); l == nil || l["timeout"] != "1s" {
		t.Errorf("shutdown line %v: want timeout \"1s\"", l)
	}
}

// TestSecondSignalDuringHangingTokenCommand: a second SIGTERM during the
// drain ends the process at once (operations.md §4), and still leaves no
// process of the hanging command's group behind: the command runs in a
// group of its own, so neither the signal nor the terminal's Ctrl-C
// reaches it.
func TestSecondSignalDuringHangingTokenCommand(t *testing.T) {
	c := pgtest.Require(t)
	hang, err := filepath.Abs("../../testdata/tokencmd/hang.sh")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	p := startQuerycop(t, c,
		"GATEKEEPER_BACKEND_HOST=localhost",
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE="+c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_CMD="+hang,
		"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=2m",
		"GATEKEEPER_SHUTDOWN_TIMEOUT=2m", // the drain would wait for the client
		"TOKENCMD_PID_FILE="+pidFile,
		"PATH="+os.Getenv("PATH"),
	)
	pid, pgid := startHangingMint(t, p, pidFile)
	p.signal(t, syscall.SIGTERM)
	if ok, why := poll(10*time.Second, func() (bool, string) {
		return logLine(p.stderr.lines(t), "shutting down: no new clients, waiting for sessions to end") != nil, "no drain log line"
	}); !ok {
		t.Fatal(why)
	}
	p.signal(t, syscall.SIGTERM)
	p.waitExit(t, 5*time.Second)
	testkit.AssertGroupGone(t, pid, pgid)
}

// startHangingMint has a client ask for a token, so that hang.sh starts and
// hangs, and returns its PID and process group once it (and its child)
// run.
func startHangingMint(t *testing.T, p *process, pidFile string) (pid, pgid int) {
	t.Helper()
	go func() { // needs a token: the command starts, and hangs
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if conn, err := p.connect(ctx); err == nil {
			conn.Close(context.Background())
		}
	}()
	ok, why := poll(10*time.Second, func() (bool, string) {
		data, err := os.ReadFile(pidFile)
		if err != nil || !strings.HasSuffix(string(data), "\n") {
			return false, "no PID file from hang.sh"
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		st, found := testkit.ReadProcStat(pid)
		pgid = st.PGID
		return found, "hang.sh is not running"
	})
	if !ok {
		t.Fatal(why)
	}
	if pgid == 0 || pgid == p.cmd.Process.Pid {
		t.Fatalf("hang.sh runs in process group %d, not its own", pgid)
	}
	time.Sleep(200 * time.Millisecond) // its child starts
	return pid, pgid
}
