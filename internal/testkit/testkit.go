// Package testkit holds the small helpers several packages' tests share:
// a log sink to assert on, an error tally for concurrent clients, a check
// that a process group is gone, a loopback TCP pair, and the auth query's
// set-up SQL from the docs. Test code only.
package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// LogBuffer collects log lines written from many goroutines.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// ErrorLog counts the errors of concurrent clients and keeps the first few.
type ErrorLog struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (e *ErrorLog) Add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.first) < 5 {
		e.first = append(e.first, err.Error())
	}
}

func (e *ErrorLog) Count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

func (e *ErrorLog) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprintf("%d errors, first: %q", e.n, e.first)
}

// ProcStat is what the tests need of /proc/<pid>/stat.
type ProcStat struct {
	Comm  string
	State byte
	PPID  int
	PGID  int
}

// ReadProcStat parses /proc/<pid>/stat; ok is false if the process is gone.
func ReadProcStat(pid int) (st ProcStat, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, false
	}
	s := string(data)
	// "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return st, false
	}
	st.Comm = s[open+1 : closing]
	fields := strings.Fields(s[closing+1:])
	if len(fields) < 3 {
		return st, false
	}
	st.State = fields[0][0]
	st.PPID, _ = strconv.Atoi(fields[1])
	st.PGID, _ = strconv.Atoi(fields[2])
	return st, true
}

// AssertGroupGone fails t unless pid no longer exists and no process of
// group pgid remains, polling briefly while the kernel tears them down. A
// zombie whose parent is not this test process does not count: orphaned
// grandchildren are init's to reap, which the code under test cannot do.
func AssertGroupGone(t testing.TB, pid, pgid int) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		left = left[:0]
		if st, ok := ReadProcStat(pid); ok && (st.State != 'Z' || st.PPID == os.Getpid()) {
			left = append(left, fmt.Sprintf("pid %d (%s, state %c)", pid, st.Comm, st.State))
		}
		if st, ok := ReadProcStat(pgid); ok && pgid != pid {
			// The group leader is the code's own child: reaped, not a zombie.
			left = append(left, fmt.Sprintf("leader %d (%s, state %c)", pgid, st.Comm, st.State))
		}
		entries, err := os.ReadDir("/proc")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			p, err := strconv.Atoi(e.Name())
			if err != nil || p == pid || p == pgid {
				continue
			}
			st, ok := ReadProcStat(p)
			if !ok || st.PGID != pgid || (st.State == 'Z' && st.PPID != os.Getpid()) {
				continue
			}
			left = append(left, fmt.Sprintf("pid %d (%s, state %c)", p, st.Comm, st.State))
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process group %d survived: %s", pgid, strings.Join(left, ", "))
		}
	}
}

// Query runs sql (one or more statements) and returns the first column of
// the first row of the last result that has rows.
func Query(ctx context.Context, c *pgconn.PgConn, sql string) (string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	out := ""
	for _, r := range res {
		if r.Err != nil {
			return "", r.Err
		}
		if len(r.Rows) > 0 && len(r.Rows[0]) > 0 {
			out = string(r.Rows[0][0])
		}
	}
	return out, nil
}

// SQLState is the SQLSTATE of a server error, or "".
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// LoopbackPair returns the two ends of a TCP connection on 127.0.0.1: the
// dialled end first, then the accepted one. Both are closed when the test
// ends.
func LoopbackPair(tb testing.TB) (dialed, accepted net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		got <- c
	}()
	dialed, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	accepted = <-got
	if accepted == nil {
		dialed.Close()
		tb.Fatal("accepting the loopback connection failed")
	}
	tb.Cleanup(func() {
		dialed.Close()
		accepted.Close()
	})
	return dialed, accepted
}

// AuthQuerySQL is the SQL docs/security.md gives for the auth query's role
// and lookup function (the ```sql block after <!-- auth-query-sql -->),
// with the role's password put in: tests run exactly what users are told
// to run. docsDir is the path of the repository's docs directory.
func AuthQuerySQL(docsDir, password string) (string, error) {
	doc, err := os.ReadFile(filepath.Join(docsDir, "security.md"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile("(?s)<!-- auth-query-sql -->\\s*```sql\\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		return "", errors.New("docs/security.md has no ```sql block after <!-- auth-query-sql -->")
	}
	sql := string(m[1])
	if !strings.Contains(sql, "'choose-a-password'") {
		return "", errors.New("the auth query SQL in docs/security.md no longer sets PASSWORD 'choose-a-password'")
	}
	return strings.Replace(sql, "'choose-a-password'", "'"+password+"'", 1), nil
}
