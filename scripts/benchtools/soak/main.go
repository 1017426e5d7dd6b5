// Command soak is the writing half of scripts/soak: concurrent clients that
// commit uniquely numbered rows through a connection pooler for a while,
// recording the outcome of every transaction, then a direct check of the
// table that nothing acknowledged was lost, nothing that failed was kept,
// and nothing was duplicated.
//
//	PGPASSWORD=secret soak -gateway "host=127.0.0.1 port=6432 user=soak dbname=soak" \
//	    -direct "host=/tmp/x port=5432 user=postgres dbname=soak" -duration 10m
//
// Each client opens a session, runs 1 to 8 transactions (BEGIN; two
// INSERTs of (client, seq, part); COMMIT), closes it and opens another, so
// sessions keep coming and going. A transaction's outcome is "acked" (COMMIT
// answered COMMIT), "failed" (COMMIT never sent, or refused by the server)
// or "unknown" (the connection died with the COMMIT in flight: it may have
// happened or not). The check reads the table on a direct connection.
//
// It prints "key: value" lines (see report) and, with -progress, one line
// per interval on standard error. Exit status: 0 when the check holds, 1
// when a commit was lost, kept, duplicated or half kept, 2 on a usage or
// set-up error.
package main

import (
	"context"
	"flag"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/commitcheck"
)

type counters struct{ acked, failed, unknown atomic.Int64 }

func client(ctx context.Context, cfg *pgconn.Config, table string, id int, deadline time.Time, errs *commitcheck.ErrorKinds, cnt *counters) []commitcheck.Outcome {
	var out []commitcheck.Outcome
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	left := 0
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			c, err := pgconn.ConnectConfig(cctx, cfg)
			cancel()
			if err != nil {
				errs.Add("connect", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn, left = c, 1+mathrand.IntN(8)
		}
		seq := len(out) + 1
		o, phase, err := commitcheck.Transaction(ctx, conn, table, id, seq, 30*time.Second)
		out = append(out, o)
		switch o {
		case commitcheck.Acked:
			cnt.acked.Add(1)
		case commitcheck.Failed:
			cnt.failed.Add(1)
		case commitcheck.Unknown:
			cnt.unknown.Add(1)
		}
		if err != nil {
			errs.Add(phase, err)
			conn.Close(context.Background())
			conn = nil
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if left--; left == 0 {
			conn.Close(context.Background())
			conn = nil
		}
	}
	return out
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	gateway := flag.String("gateway", "", "connection string of the pooler (the password comes from PGPASSWORD)")
	direct := flag.String("direct", "", "connection string straight to the server, for set-up and the check")
	table := flag.String("table", "soak_rows", "table to insert into (created, or emptied if it exists)")
	clients := flag.Int("clients", 16, "concurrent clients")
	duration := flag.Duration("duration", 10*time.Minute, "how long the clients insert")
	progress := flag.Duration("progress", time.Minute, "print a progress line to standard error this often (0: never)")
	flag.Parse()
	if *gateway == "" || *direct == "" || *clients < 1 || *duration <= 0 || !regexp.MustCompile(`^[a-z_][a-z0-9_]*$`).MatchString(*table) {
		fail("-gateway and -direct are required, -clients and -duration must be positive, -table a plain name")
	}
	gcfg, err := pgconn.ParseConfig(*gateway)
	if err != nil {
		fail("-gateway: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	setup, err := pgconn.Connect(ctx, *direct)
	if err != nil {
		fail("connecting directly: %v", err)
	}
	if _, err := setup.Exec(ctx, fmt.Sprintf(`drop table if exists %[1]s;
		create table %[1]s(client int not null, seq int not null, part int not null);
		grant select, insert on %[1]s to %[2]s`, *table, pgconnQuoteIdent(gcfg.User))).ReadAll(); err != nil {
		fail("creating %s: %v", *table, err)
	}
	setup.Close(context.Background())

	start := time.Now()
	deadline := start.Add(*duration)
	errs := &commitcheck.ErrorKinds{}
	var cnt counters
	results := make([][]commitcheck.Outcome, *clients)
	var wg sync.WaitGroup
	for id := range *clients {
		wg.Go(func() { results[id] = client(ctx, gcfg, *table, id, deadline, errs, &cnt) })
	}
	done := make(chan struct{})
	if *progress > 0 {
		go func() {
			t := time.NewTicker(*progress)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					fmt.Fprintf(os.Stderr, "soak: %s: %d acked, %d failed, %d unknown\n",
						time.Since(start).Round(time.Second), cnt.acked.Load(), cnt.failed.Load(), cnt.unknown.Load())
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start)

	// The check, straight from the server.
	check, err := pgconn.Connect(context.Background(), *direct)
	if err != nil {
		fail("connecting directly for the check: %v", err)
	}
	defer check.Close(context.Background())
	res, err := check.Exec(context.Background(), fmt.Sprintf(
		"select client, seq, count(*) filter (where part = 1), count(*) filter (where part = 2) from %s group by 1, 2", *table)).ReadAll()
	if err != nil {
		fail("reading %s: %v", *table, err)
	}
	rows := map[[2]int][2]int{}
	for _, row := range res[0].Rows {
		var v [4]int
		for i := range v {
			v[i], _ = strconv.Atoi(string(row[i]))
		}
		rows[[2]int{v[0], v[1]}] = [2]int{v[2], v[3]}
	}
	var nAcked, nFailed, nUnknown, unknownIn int
	var lost, ghost, partial, dup []string
	for id, outs := range results {
		for i, o := range outs {
			key := [2]int{id, i + 1}
			parts := rows[key]
			delete(rows, key)
			name := fmt.Sprintf("(%d,%d)", id, i+1)
			if parts[0] > 1 || parts[1] > 1 {
				dup = append(dup, name)
			}
			if parts[0] != parts[1] {
				partial = append(partial, name)
			}
			present := parts[0] > 0 || parts[1] > 0
			switch o {
			case commitcheck.Acked:
				nAcked++
				if !present {
					lost = append(lost, name)
				}
			case commitcheck.Failed:
				nFailed++
				if present {
					ghost = append(ghost, name)
				}
			case commitcheck.Unknown:
				nUnknown++
				if present {
					unknownIn++
				}
			}
		}
	}
	var phantom []string
	for key := range rows {
		phantom = append(phantom, fmt.Sprintf("(%d,%d)", key[0], key[1]))
	}
	sample := func(s []string) string {
		if len(s) == 0 {
			return "0"
		}
		return fmt.Sprintf("%d e.g. %s", len(s), strings.Join(s[:min(5, len(s))], " "))
	}
	fmt.Printf("clients: %d\n", *clients)
	fmt.Printf("duration: %s\n", elapsed.Round(time.Second))
	fmt.Printf("transactions acknowledged: %d\n", nAcked)
	fmt.Printf("transactions failed: %d\n", nFailed)
	fmt.Printf("transactions unknown outcome: %d (committed: %d)\n", nUnknown, unknownIn)
	fmt.Printf("lost acknowledged commits: %s\n", sample(lost))
	fmt.Printf("failed transactions kept: %s\n", sample(ghost))
	fmt.Printf("half-kept transactions: %s\n", sample(partial))
	fmt.Printf("duplicated transactions: %s\n", sample(dup))
	fmt.Printf("rows nobody inserted: %s\n", sample(phantom))
	fmt.Println("errors by phase and kind:")
	for _, l := range errs.Lines() {
		fmt.Println(l)
	}
	if len(lost)+len(ghost)+len(partial)+len(dup)+len(phantom) > 0 {
		os.Exit(1)
	}
}

// pgconnQuoteIdent double-quotes a role name for GRANT.
func pgconnQuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
