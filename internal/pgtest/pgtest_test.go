package pgtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) {
	Main(m, Options{TLS: true}, nil)
}

func connect(t *testing.T, connStr string) error {
	t.Helper()
	_, err := query(connStr, "SELECT 1")
	return err
}

// query returns the first column of the first row as text.
func query(connStr, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, connStr)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return "", res.Err
	}
	if len(res.Rows) == 0 {
		return "", errors.New("no rows")
	}
	return string(res.Rows[0][0]), nil
}

func TestRolesOverTCP(t *testing.T) {
	c := Require(t)
	for _, tc := range []struct{ user, pass string }{
		{UserSCRAM, PassSCRAM},
		{UserMD5, PassMD5},
		{UserPassword, PassPassword},
		{UserTrust, ""},
	} {
		t.Run(tc.user, func(t *testing.T) {
			if err := connect(t, c.ConnString(tc.user, tc.pass, Database)); err != nil {
				t.Fatalf("connecting as %s: %v", tc.user, err)
			}
		})
	}
	// md5 auth only works with an MD5-stored password.
	super := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", quote(c.SocketDir), c.Port)
	got, err := query(super, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '"+UserMD5+"'")
	if err != nil || got != "md5" {
		t.Fatalf("u_md5 password prefix = %q, %v; want md5", got, err)
	}
}

func TestWrongPassword(t *testing.T) {
	c := Require(t)
	err := connect(t, c.ConnString(UserSCRAM, "wrong", Database))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("want SQLSTATE 28P01, got %v", err)
	}
}

func TestTLS(t *testing.T) {
	c := Require(t)
	tlsConn := func(rootCert string) string {
		return fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			c.Port, quote(UserSCRAM), quote(PassSCRAM), quote(Database), quote(rootCert))
	}
	got, err := query(tlsConn(c.CA.CertFile), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
	if err != nil || got != "t" {
		t.Fatalf("verify-full with the server CA: ssl=%q, %v", got, err)
	}
	err = connect(t, tlsConn(c.OtherCA.CertFile))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("verify-full with an unrelated CA: want certificate error, got %v", err)
	}
}

func TestQuote(t *testing.T) {
	if got, want := quote(`a'b\c`), `'a\'b\\c'`; got != want {
		t.Fatalf("quote = %s, want %s", got, want)
	}
}

// Restart and StopServer/StartServer run last-ish but must leave the server
// up for whatever runs after them.
func TestRestart(t *testing.T) {
	c := Require(t)
	ctx := context.Background()
	if err := c.Restart("fast"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "SELECT 1; SELECT 2"); err != nil {
		t.Fatalf("exec after restart: %v", err)
	}
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, c.ConnString(UserTrust, "", Database)); err == nil {
		t.Fatal("connected while server stopped")
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, c.ConnString(UserTrust, "", Database)); err != nil {
		t.Fatalf("connecting after StartServer: %v", err)
	}
}

// TestPanicCleanup runs this test binary again with a test that panics, and
// checks that its cluster's server is stopped and its directory removed
// although the deferred Stop in Main never runs.
func TestPanicCleanup(t *testing.T) {
	if os.Getenv("PGTEST_PANIC_CHILD") == "1" {
		c := Require(t)
		pid, err := os.ReadFile(c.DataDir + "/postmaster.pid")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("PGTEST %s %s\n", c.Dir, strings.SplitN(string(pid), "\n", 2)[0])
		panic("deliberate panic to test cleanup")
	}
	Require(t)
	if testing.Short() {
		t.Skip("starts a second cluster")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPanicCleanup$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PGTEST_PANIC_CHILD=1")
	out, _ := cmd.CombinedOutput() // exits non-zero because of the panic
	var dir string
	var pid int
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "PGTEST" {
			dir = f[1]
			pid, _ = strconv.Atoi(f[2])
		}
	}
	if dir == "" || pid == 0 {
		t.Fatalf("child did not report its cluster:\n%s", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, statErr := os.Stat(dir)
		alive := syscall.Kill(pid, 0) == nil
		if os.IsNotExist(statErr) && !alive {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after child panic: dir %s exists=%v, postmaster %d alive=%v", dir, statErr == nil, pid, alive)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
