package wire_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
)

// Attacks on SCRAM end to end through the auth query (issue 16) with user
// names a client chooses freely: the answer is the one PostgreSQL gives an
// unknown user, and nothing makes the gateway call its own setup broken.

func connectAs(t *testing.T, port int, user, password string) error {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=disable connect_timeout=20 password=%s",
		port, pgtest.Database, password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = user
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		c.Close(ctx)
	}
	return err
}

func TestSCRAMAttackUserNames(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_names"
	scramRole(t, c, user, e2ePass)
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery)

	for _, name := range []string{
		"bad\xff\xfeutf8",             // not UTF-8: the query's text parameter refuses it
		"o'; DROP ROLE e2e_names; --", // SQL in the name: $1 keeps it data
		`qu"ote\`,
		strings.Repeat("x", 200),
	} {
		err := connectAs(t, g.port, name, e2ePass)
		wantPgError(t, err, "28P01", "password authentication failed for user")
	}
	if strings.Contains(g.log.String(), "auth query failed") {
		t.Errorf("a client's made-up user name made the gateway report its auth query broken:\n%s", g.log.String())
	}
	// The real user is unaffected.
	if err := connectAs(t, g.port, user, e2ePass); err != nil {
		t.Fatalf("%s after the attacks: %v", user, err)
	}
}

// A flood of logins for made-up names, concurrent, does not keep a real
// user out or hang the gateway.
func TestSCRAMAttackUnknownUserFlood(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_flood"
	scramRole(t, c, user, e2ePass)
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- connectAs(t, g.port, fmt.Sprintf("nobody_%d", i), "x")
		}()
	}
	if err := connectAs(t, g.port, user, e2ePass); err != nil {
		t.Errorf("real user during the flood: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var pgErr *pgconn.PgError
		if !asPgErr(err, &pgErr) || (pgErr.Code != "28P01" && pgErr.Code != "28000") {
			t.Errorf("unknown user: %v", err)
		}
	}
}

func asPgErr(err error, target **pgconn.PgError) bool { return errors.As(err, target) }
