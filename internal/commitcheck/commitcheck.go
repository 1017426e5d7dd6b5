// Package commitcheck runs the numbered two-row transactions that the
// nothing-lost test and the soak driver use to prove that no acknowledged
// commit is lost through the gateway, and tallies the errors they meet.
package commitcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Outcome is what a client knows of one transaction.
type Outcome byte

const (
	Failed  Outcome = iota + 1 // not committed: COMMIT was never sent, or the server refused it
	Acked                      // COMMIT answered with the COMMIT tag
	Unknown                    // the connection died with the COMMIT in flight
)

// Transaction inserts rows (client, seq, 1) and (client, seq, 2) into table
// in one transaction, each statement bounded by timeout. It returns the
// outcome and, for an error, the phase it happened in (begin, insert,
// commit).
func Transaction(ctx context.Context, conn *pgconn.PgConn, table string, client, seq int, timeout time.Duration) (Outcome, string, error) {
	for _, step := range []struct{ phase, sql string }{
		{"begin", "begin"},
		{"insert", fmt.Sprintf("insert into %s(client, seq, part) values (%d, %d, 1)", table, client, seq)},
		{"insert", fmt.Sprintf("insert into %s(client, seq, part) values (%d, %d, 2)", table, client, seq)},
	} {
		if _, err := exec(ctx, conn, step.sql, timeout); err != nil {
			// No COMMIT was sent: the transaction is rolled back.
			return Failed, step.phase, err
		}
	}
	tag, err := exec(ctx, conn, "commit", timeout)
	var pgErr *pgconn.PgError
	switch {
	case err == nil && tag == "COMMIT":
		return Acked, "", nil
	case err == nil:
		return Failed, "commit", fmt.Errorf("COMMIT answered %q", tag)
	case errors.As(err, &pgErr) && pgErr.Severity != "FATAL" && pgErr.Severity != "PANIC":
		return Failed, "commit", err // the server refused it
	case pgconn.SafeToRetry(err):
		return Failed, "commit", err // never sent
	default:
		return Unknown, "commit", err
	}
}

// exec runs one statement and returns its command tag.
func exec(ctx context.Context, conn *pgconn.PgConn, sql string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 {
		return "", errors.New("no result")
	}
	if res[0].Err != nil {
		return "", res[0].Err
	}
	return res[0].CommandTag.String(), nil
}

// ErrorKinds counts errors by phase and kind, from many goroutines.
type ErrorKinds struct {
	mu sync.Mutex
	n  map[string]int
}

var digits = regexp.MustCompile(`[0-9]+`)

// Add counts err under phase. Numbers (ports, PIDs) are masked so errors of
// one kind count together; SQLSTATEs are kept.
func (e *ErrorKinds) Add(phase string, err error) {
	kind := digits.ReplaceAllString(err.Error(), "N")
	var pgErr *pgconn.PgError
	var ne net.Error
	switch {
	case errors.As(err, &pgErr):
		kind = pgErr.Severity + " " + pgErr.Code + " " + digits.ReplaceAllString(pgErr.Message, "N")
	case errors.As(err, &ne) && ne.Timeout():
		kind = "timeout"
	}
	if len(kind) > 100 {
		kind = kind[:100] + "..."
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[phase+": "+kind]++
}

// Lines lists the counts, one kind a line, sorted.
func (e *ErrorKinds) Lines() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for k, n := range e.n {
		out = append(out, fmt.Sprintf("%7d  %s", n, k))
	}
	slices.Sort(out)
	return out
}

func (e *ErrorKinds) String() string { return strings.Join(e.Lines(), "\n") }
