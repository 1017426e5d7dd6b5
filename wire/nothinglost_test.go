package wire_test

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/commitcheck"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// TestNothingLost: concurrent clients commit uniquely numbered rows through
// the gateway while it retires connections every ~2s, has its pool resized
// up and down, drained twice, its backend token rotated twice and its
// server restarted. Then the table is read directly: every commit the
// gateway acknowledged is there, none that failed is, no transaction is
// half there and no row is there twice. A commit whose connection died
// while the COMMIT was in flight may have happened or not; those are
// counted apart.

type nlAttempt struct {
	outcome commitcheck.Outcome
	at      time.Time // when the outcome was known
}

// nlClient is one client's loop: sessions of 1 to 8 transactions, until
// deadline. attempts[seq-1] is the outcome of transaction seq.
func nlClient(ctx context.Context, g *gateway, role, table string, id int, deadline time.Time, errs *commitcheck.ErrorKinds) []nlAttempt {
	var attempts []nlAttempt
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	left := 0
	for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			c, err := tokConnect(cctx, g, role)
			cancel()
			if err != nil {
				errs.Add("connect", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn, left = c, 1+mathrand.IntN(8)
		}
		seq := len(attempts) + 1
		outcome, phase, err := commitcheck.Transaction(ctx, conn, table, id, seq, 15*time.Second)
		attempts = append(attempts, nlAttempt{outcome, time.Now()})
		if err != nil {
			errs.Add(phase, err)
			conn.Close(context.Background())
			conn = nil
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if left--; left == 0 {
			conn.Close(context.Background())
			conn = nil
		}
	}
	return attempts
}

// nlRows reads the table directly: per (client, seq), how many rows of
// part 1 and of part 2.
func nlRows(t *testing.T, c *pgtest.Cluster, table string) map[[2]int][2]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", c.SocketDir, c.Port, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, fmt.Sprintf(
		"select client, seq, count(*) filter (where part = 1), count(*) filter (where part = 2) from %s group by 1, 2", table)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]int][2]int{}
	for _, row := range res[0].Rows {
		var v [4]int
		for i := range v {
			v[i], _ = strconv.Atoi(string(row[i]))
		}
		out[[2]int{v[0], v[1]}] = [2]int{v[2], v[3]}
	}
	return out
}

func TestNothingLost(t *testing.T) {
	c := fltCluster(t, pgtest.Options{TLS: true}) // TLS: token mode needs it
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) { nlRun(t, c, mode, 28*time.Second) })
	}
}

func nlRun(t *testing.T, c *pgtest.Cluster, mode wire.PoolMode, d time.Duration) {
	const clients = 16
	role := "nl_" + string(mode)
	table := "nl_rows_" + string(mode)
	env := newTokEnv(t, c)
	env.createRole(role, time.Now().Add(time.Hour))
	mustFltSQL(t, c, fmt.Sprintf(`create table %s(client int not null, seq int not null, part int not null);
		grant select, insert on %s to %s`, table, table, role))
	t.Cleanup(func() { _, _ = fltSQL(c, "drop table if exists "+table) }) // before the role is dropped
	pcfg := testPoolConfig()
	pcfg.Size = 6
	pcfg.MaxConnLifetime = 2 * time.Second // retirement all along
	g := startPooledGateway(t, tokenBackendConfig(c, "jwt-from-dir.sh"), pcfg, fltMode(mode))
	env.watch(g)
	startedBefore := mustFltSQL(t, c, "select pg_postmaster_start_time()")

	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	start := time.Now()
	deadline := start.Add(d)
	var errs commitcheck.ErrorKinds
	results := make([][]nlAttempt, clients)
	var wg sync.WaitGroup
	for id := range clients {
		wg.Go(func() { results[id] = nlClient(ctx, g, role, table, id, deadline, &errs) })
	}

	// The faults, on a schedule scaled to d (28s: every 2-3s).
	var restartedAt time.Time
	var faultLog []string
	rotate := func() {
		tok := env.newToken(time.Now().Add(time.Hour))
		// The command prints the new token before the server takes it, so
		// no mint in between gets a token about to be refused.
		if err := env.writeToken(role, tok); err != nil {
			t.Error(err)
		}
		if err := env.setPassword(role, tok); err != nil {
			t.Error(err)
		}
	}
	at := func(frac float64) time.Time { return start.Add(time.Duration(frac * float64(d))) }
	schedule := []struct {
		at   time.Time
		name string
		do   func() string
	}{
		{at(0.10), "resize 6 -> 12", func() string { return fmt.Sprint(g.pools.Resize("", "", 12), " pools") }},
		{at(0.20), "drain", func() string { return fmt.Sprint(g.pools.Drain(), " connections to retire") }},
		{at(0.28), "token rotation", func() string { rotate(); return "" }},
		{at(0.38), "resize 12 -> 3", func() string { return fmt.Sprint(g.pools.Resize("", "", 3), " pools") }},
		{at(0.50), "backend restart (fast)", func() string {
			restartedAt = time.Now()
			if err := c.Restart("fast"); err != nil {
				t.Errorf("restarting the server: %v", err)
			}
			return "took " + time.Since(restartedAt).Round(time.Millisecond).String()
		}},
		{at(0.62), "resize 3 -> 6", func() string { return fmt.Sprint(g.pools.Resize("", "", 6), " pools") }},
		{at(0.72), "drain", func() string { return fmt.Sprint(g.pools.Drain(), " connections to retire") }},
		{at(0.82), "token rotation", func() string { rotate(); return "" }},
	}
	for _, f := range schedule {
		time.Sleep(time.Until(f.at))
		note := f.do()
		faultLog = append(faultLog, fmt.Sprintf("%5.1fs %s %s", f.at.Sub(start).Seconds(), f.name, note))
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Direct to the server: what is really there.
	rows := nlRows(t, c, table)
	var acked, failed, unknown, unknownIn, ackedAfterRestart int
	var lost, ghost, partial, dup []string
	for id, attempts := range results {
		for i, a := range attempts {
			key := [2]int{id, i + 1}
			parts := rows[key]
			delete(rows, key)
			name := fmt.Sprintf("(%d,%d)", id, i+1)
			if parts[0] > 1 || parts[1] > 1 {
				dup = append(dup, fmt.Sprintf("%s %v", name, parts))
			}
			if parts[0] != parts[1] {
				partial = append(partial, fmt.Sprintf("%s %v", name, parts))
			}
			present := parts[0] > 0 || parts[1] > 0
			switch a.outcome {
			case commitcheck.Acked:
				acked++
				if !restartedAt.IsZero() && a.at.After(restartedAt) {
					ackedAfterRestart++
				}
				if !present {
					lost = append(lost, name)
				}
			case commitcheck.Failed:
				failed++
				if present {
					ghost = append(ghost, name)
				}
			case commitcheck.Unknown:
				unknown++
				if present {
					unknownIn++
				}
			}
		}
	}
	var phantom []string
	for key, parts := range rows {
		phantom = append(phantom, fmt.Sprintf("(%d,%d) %v", key[0], key[1], parts))
	}

	st, _ := userStats(g, role)
	runs := len(env.runs())
	startedAfter := mustFltSQL(t, c, "select pg_postmaster_start_time()")
	t.Logf("%s mode, %d clients for %s; faults:\n%s", mode, clients, elapsed.Round(time.Millisecond), strings.Join(faultLog, "\n"))
	t.Logf("transactions: %d acknowledged (%d after the restart), %d failed, %d unknown outcome (%d of them committed)",
		acked, ackedAfterRestart, failed, unknown, unknownIn)
	t.Logf("errors by phase and kind:\n%s", errs.String())
	t.Logf("pool: created %d, retired %d, closed %v, dial failures %d; token command runs %d",
		st.Created, st.Retired, st.Closed, st.DialFailures, runs)

	if len(lost) > 0 {
		t.Errorf("%d acknowledged commits are not in the table: %v", len(lost), lost[:min(10, len(lost))])
	}
	if len(ghost) > 0 {
		t.Errorf("%d transactions that failed are in the table: %v", len(ghost), ghost[:min(10, len(ghost))])
	}
	if len(partial) > 0 {
		t.Errorf("%d transactions are half in the table (part 1 and part 2 counts): %v", len(partial), partial[:min(10, len(partial))])
	}
	if len(dup) > 0 {
		t.Errorf("%d transactions have duplicated rows: %v", len(dup), dup[:min(10, len(dup))])
	}
	if len(phantom) > 0 {
		t.Errorf("%d rows no client attempted: %v", len(phantom), phantom[:min(10, len(phantom))])
	}
	// The faults did happen, and traffic went on through them.
	if acked < 100 || ackedAfterRestart == 0 {
		t.Errorf("only %d commits acknowledged, %d after the restart", acked, ackedAfterRestart)
	}
	if st.Closed["lifetime"] == 0 {
		t.Errorf("no connection retired for its lifetime (2s): closed %v", st.Closed)
	}
	if startedAfter == startedBefore {
		t.Errorf("the server was not restarted (postmaster start time %s)", startedAfter)
	}
	if runs < 3 {
		t.Errorf("the token command ran %d times; want at least 3 (first token and one per rotation)", runs)
	}
}

// TestNothingLostAtShutdown: clients commit numbered transactions through a
// gateway that is shut down with a short timeout (as on SIGTERM). Shutdown
// closes each client between requests, never with a COMMIT in flight, so
// no client sees a failure or a lost connection for a commit that in fact
// happened. (A request still running when wire.ShutdownAnswerWait ends
// would be the exception; these transactions take milliseconds, so none
// is.) Several rounds per mode, since each shutdown is one moment.
func TestNothingLostAtShutdown(t *testing.T) {
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			table := "nl_shutdown_" + string(mode)
			mustFltSQL(t, cluster, fmt.Sprintf(`drop table if exists %s;
				create table %s(client int not null, seq int not null, part int not null);
				grant select, insert on %s to %s`, table, table, table, pgtest.UserSCRAM))
			t.Cleanup(func() { _, _ = fltSQL(cluster, "drop table if exists "+table) })
			const rounds, clients = 3, 16
			var acked, failed, unknown, unknownIn int
			var wrong []string
			for round := range rounds {
				g := startGateway(t, backendConfig(cluster, backend.TLSDisable), fltMode(mode))
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				results := make([][]commitcheck.Outcome, clients)
				var errs commitcheck.ErrorKinds
				var wg sync.WaitGroup
				for i := range clients {
					id := round*clients + i
					wg.Go(func() {
						conn, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
						if err != nil {
							errs.Add("connect", err)
							return
						}
						defer conn.Close(context.Background())
						for seq := 1; seq <= 100000; seq++ {
							outcome, phase, err := commitcheck.Transaction(ctx, conn, table, id, seq, 15*time.Second)
							results[i] = append(results[i], outcome)
							if err != nil {
								errs.Add(phase, err)
								return
							}
						}
					})
				}
				time.Sleep(700 * time.Millisecond)
				sctx, scancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := g.srv.Shutdown(sctx)
				scancel()
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
				wg.Wait()
				cancel()
				t.Logf("round %d errors:\n%s", round, errs.String())
				rows := nlRows(t, cluster, table)
				for i, outcomes := range results {
					id := round*clients + i
					for s, o := range outcomes {
						parts := rows[[2]int{id, s + 1}]
						present := parts[0] > 0 || parts[1] > 0
						switch {
						case o == commitcheck.Acked:
							acked++
							if parts != [2]int{1, 1} {
								wrong = append(wrong, fmt.Sprintf("(%d,%d) acknowledged, rows %v", id, s+1, parts))
							}
						case o == commitcheck.Failed:
							failed++
							if present {
								wrong = append(wrong, fmt.Sprintf("(%d,%d) failed, rows %v", id, s+1, parts))
							}
						default:
							unknown++
							if present {
								unknownIn++
								wrong = append(wrong, fmt.Sprintf("(%d,%d) connection lost during COMMIT, yet committed: rows %v", id, s+1, parts))
							}
						}
					}
				}
			}
			t.Logf("%s mode, %d shutdowns: %d acknowledged, %d failed, %d unknown outcome (%d of them committed)",
				mode, rounds, acked, failed, unknown, unknownIn)
			if len(wrong) > 0 {
				t.Errorf("%d transactions whose outcome the client got wrong:\n%s", len(wrong), strings.Join(wrong[:min(20, len(wrong))], "\n"))
			}
			if acked < rounds*clients {
				t.Errorf("only %d commits acknowledged before the shutdowns", acked)
			}
		})
	}
}
