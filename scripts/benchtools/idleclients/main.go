// Command idleclients opens many authenticated PostgreSQL connections to one
// address and holds them idle, to measure what an idle client costs a
// connection pooler. scripts/bench runs it.
//
//	PGPASSWORD=secret idleclients -host 127.0.0.1 -port 6432 -user bench -db bench -n 2000
//
// It dials at most -parallel connections at a time, prints
// "ready opened=N errors=E" once every dial has finished, then holds the
// open connections until standard input closes or SIGINT/SIGTERM arrives,
// and closes them. Dial errors are counted; the first few distinct ones are
// printed to standard error. Exit status: 0 when every connection opened,
// 1 otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	host := flag.String("host", "127.0.0.1", "server address")
	port := flag.Int("port", 5432, "server port")
	user := flag.String("user", "", "user name")
	db := flag.String("db", "", "database name")
	n := flag.Int("n", 2000, "connections to open")
	parallel := flag.Int("parallel", 50, "dials in flight at once")
	timeout := flag.Duration("dial-timeout", 30*time.Second, "limit on one connection's dial and authentication")
	hold := flag.Duration("max-hold", 10*time.Minute, "close the connections after this long even if standard input stays open")
	flag.Parse()
	if *user == "" || *db == "" || *n < 1 || *parallel < 1 {
		fmt.Fprintln(os.Stderr, "idleclients: -user and -db are required; -n and -parallel must be at least 1")
		os.Exit(2)
	}

	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		*host, *port, *user, *db))
	if err != nil {
		fmt.Fprintln(os.Stderr, "idleclients:", err)
		os.Exit(2)
	}
	cfg.Password = os.Getenv("PGPASSWORD")
	cfg.ConnectTimeout = *timeout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	conns := make([]*pgconn.PgConn, *n)
	var failed atomic.Int64
	var errMu sync.Mutex
	seen := map[string]int{}
	start := time.Now()

	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	for i := range *n {
		if ctx.Err() != nil {
			failed.Add(int64(*n - i))
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			c, err := pgconn.ConnectConfig(dctx, cfg)
			if err != nil {
				failed.Add(1)
				errMu.Lock()
				seen[err.Error()]++
				errMu.Unlock()
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()

	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	for msg, count := range seen {
		fmt.Fprintf(os.Stderr, "idleclients: %d× %s\n", count, msg)
	}
	fmt.Printf("ready opened=%d errors=%d seconds=%.1f\n", opened, failed.Load(), time.Since(start).Seconds())

	// Hold until standard input closes, a signal, or -max-hold.
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	select {
	case <-eof:
	case <-ctx.Done():
	case <-time.After(*hold):
	}

	// Close politely (Terminate message), bounded in time and concurrency.
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range conns {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = c.Close(cctx)
		}()
	}
	wg.Wait()
	fmt.Printf("closed %d\n", opened)
	if failed.Load() > 0 {
		os.Exit(1)
	}
}
