package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Roles and database created in every cluster. pg_hba.conf gives each role a
// different TCP authentication method; all other roles use scram-sha-256.
const (
	UserSCRAM    = "u_scram" // scram-sha-256, owns Database
	PassSCRAM    = "scram-secret"
	UserMD5      = "u_md5" // md5, password stored as MD5
	PassMD5      = "md5-secret"
	UserPassword = "u_password" // cleartext password method
	PassPassword = "plain-secret"
	UserTrust    = "u_trust" // trust, no password
	Database     = "appdb"
)

// binDirs is where Debian/Ubuntu install PostgreSQL server programs, which
// are not on PATH; the newest version found wins.
const binDirs = "/usr/lib/postgresql/*/bin"

const hbaConf = `local all all trust
host all u_trust 127.0.0.1/32 trust
host all u_md5 127.0.0.1/32 md5
host all u_password 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
`

// Options configure Start.
type Options struct {
	// TLS turns on ssl with a server certificate for "localhost" and
	// "127.0.0.1" signed by Cluster.CA.
	TLS bool
	// ExtraConf lines are appended to postgresql.conf.
	ExtraConf []string
}

// Cluster is a running throwaway PostgreSQL cluster.
type Cluster struct {
	Host      string // "127.0.0.1"
	Port      int    // TCP port, the same across restarts
	Dir       string // temporary base directory, removed by Stop
	DataDir   string
	SocketDir string
	LogFile   string // server log (pg_ctl -l)
	CA        *CA    // signed the server certificate; nil without TLS
	OtherCA   *CA    // unrelated CA for negative tests; nil without TLS

	pgCtl    string
	cred     *syscall.Credential // run server binaries as this user; nil unless root
	reaper   *exec.Cmd
	lifeline *os.File // closing it (or dying) makes reaper clean up
	stopOnce sync.Once
}

// findBin looks for a PostgreSQL program on PATH, then in binDir.
func findBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	found, _ := filepath.Glob(filepath.Join(binDirs, name))
	if len(found) == 0 {
		return "", fmt.Errorf("finding %s: not on PATH nor in %s", name, binDirs)
	}
	slices.SortFunc(found, func(a, b string) int { return versionOf(a) - versionOf(b) })
	return found[len(found)-1], nil
}

// versionOf reads the major version from /usr/lib/postgresql/<major>/bin/x.
func versionOf(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// Start creates and starts a new cluster with the roles and database
// described by the package constants.
func Start(opts Options) (c *Cluster, err error) {
	initdb, err := findBin("initdb")
	if err != nil {
		return nil, err
	}
	pgCtl, err := findBin("pg_ctl")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(os.TempDir(), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("creating temp dir: %w", err)
	}
	c = &Cluster{
		Host:      "127.0.0.1",
		Port:      port,
		Dir:       dir,
		DataDir:   filepath.Join(dir, "data"),
		SocketDir: filepath.Join(dir, "sock"),
		LogFile:   filepath.Join(dir, "postgres.log"),
		pgCtl:     pgCtl,
	}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()

	// initdb, pg_ctl and postgres refuse to run as root.
	if os.Geteuid() == 0 {
		if c.cred, err = postgresUser(); err != nil {
			return c, err
		}
	}
	// MkdirTemp makes 0700; the server user must be able to enter it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return c, fmt.Errorf("chmod temp dir: %w", err)
	}
	if err := os.Mkdir(c.SocketDir, 0o755); err != nil {
		return c, fmt.Errorf("creating socket dir: %w", err)
	}
	if err := c.chown(dir); err != nil {
		return c, err
	}
	if err := c.startReaper(); err != nil {
		return c, err
	}

	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"port = " + strconv.Itoa(port),
		"unix_socket_directories = " + quote(c.SocketDir),
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"max_connections = 300",
		"shared_buffers = 32MB",
		"password_encryption = 'scram-sha-256'",
		"logging_collector = off",
	}
	if opts.TLS {
		certDir := filepath.Join(dir, "certs")
		if err := os.Mkdir(certDir, 0o755); err != nil {
			return c, fmt.Errorf("creating cert dir: %w", err)
		}
		if c.CA, err = NewCA(certDir, "server"); err != nil {
			return c, err
		}
		if c.OtherCA, err = NewCA(certDir, "other"); err != nil {
			return c, err
		}
		crt, key, err := c.CA.Issue(certDir, "server", "localhost", "127.0.0.1")
		if err != nil {
			return c, err
		}
		// The server rejects a key file not owned by it or readable by others.
		if err := c.chown(certDir); err != nil {
			return c, err
		}
		conf = append(conf, "ssl = on", "ssl_cert_file = "+quote(crt), "ssl_key_file = "+quote(key))
	}
	conf = append(conf, opts.ExtraConf...)

	if err := c.run(initdb, "-D", c.DataDir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return c, fmt.Errorf("running initdb: %w", err)
	}
	if err := appendFile(filepath.Join(c.DataDir, "postgresql.conf"), "\n"+strings.Join(conf, "\n")+"\n"); err != nil {
		return c, err
	}
	if err := os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return c, fmt.Errorf("writing pg_hba.conf: %w", err)
	}
	if err := c.StartServer(); err != nil {
		return c, err
	}
	if err := c.createRoles(); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) createRoles() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	all := strings.Join([]string{UserSCRAM, UserMD5, UserPassword, UserTrust}, ", ")
	steps := []struct{ db, sql string }{
		{"postgres", fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s';
			CREATE ROLE %s LOGIN PASSWORD '%s';
			CREATE ROLE %s LOGIN`, UserSCRAM, PassSCRAM, UserPassword, PassPassword, UserTrust)},
		// The md5 auth method needs an MD5-stored password; the setting is
		// per session, so it goes in the same Exec.
		{"postgres", fmt.Sprintf(`SET password_encryption = 'md5';
			CREATE ROLE %s LOGIN PASSWORD '%s'`, UserMD5, PassMD5)},
		// CREATE DATABASE cannot share a multi-statement query.
		{"postgres", fmt.Sprintf(`CREATE DATABASE %s OWNER %s`, Database, UserSCRAM)},
		{"postgres", fmt.Sprintf(`GRANT ALL ON DATABASE %s TO %s`, Database, all)},
		{Database, fmt.Sprintf(`GRANT ALL ON SCHEMA public TO %s`, all)},
	}
	for _, s := range steps {
		if err := c.ExecIn(ctx, s.db, s.sql); err != nil {
			return fmt.Errorf("creating roles: %w", err)
		}
	}
	return nil
}

// Stop stops the server immediately and removes Dir. It is safe to call
// more than once.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
			if err := c.run(c.pgCtl, "-D", c.DataDir, "-w", "-t", "60", "stop", "-m", "immediate"); err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: stopping server: %v\n", err)
			}
		}
		if c.reaper != nil {
			c.lifeline.Close() // reaper finds nothing left to do
			c.reaper.Wait()
		}
		os.RemoveAll(c.Dir)
	})
}

// StopServer stops the server with the given pg_ctl shutdown mode (smart,
// fast or immediate) but keeps the data, so StartServer can bring it back.
func (c *Cluster) StopServer(mode string) error {
	if err := c.run(c.pgCtl, "-D", c.DataDir, "-w", "-t", "60", "stop", "-m", mode); err != nil {
		return fmt.Errorf("stopping server: %w", err)
	}
	return nil
}

// StartServer starts the server on the same port and data.
func (c *Cluster) StartServer() error {
	if err := c.run(c.pgCtl, "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("starting server: %w%s", err, c.logTail())
	}
	return nil
}

// Restart restarts the server with the given pg_ctl shutdown mode.
func (c *Cluster) Restart(mode string) error {
	if err := c.run(c.pgCtl, "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "60", "restart", "-m", mode); err != nil {
		return fmt.Errorf("restarting server: %w%s", err, c.logTail())
	}
	return nil
}

// Exec runs sql (one or more statements) as superuser in database postgres.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	return c.ExecIn(ctx, "postgres", sql)
}

// ExecIn runs sql (one or more statements) as superuser in database db,
// over the Unix socket where "postgres" is trusted.
func (c *Cluster) ExecIn(ctx context.Context, db, sql string) error {
	connStr := fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		quote(c.SocketDir), c.Port, quote(db))
	conn, err := pgconn.Connect(ctx, connStr)
	if err != nil {
		return fmt.Errorf("connecting as superuser: %w", err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return fmt.Errorf("executing sql: %w", err)
	}
	for _, r := range results {
		if r.Err != nil {
			return fmt.Errorf("executing sql: %w", r.Err)
		}
	}
	return nil
}

// ConnString returns a keyword/value connection string for user on
// 127.0.0.1:Port, database db, with sslmode=disable.
func (c *Cluster) ConnString(user, password, db string) string {
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=%s",
		quote(c.Host), quote(strconv.Itoa(c.Port)), quote(user), quote(password), quote(db), quote("disable"))
}

// startReaper starts a detached shell that waits for EOF on a pipe whose
// only write end this process holds, then stops the server and removes Dir.
// A deferred Stop in TestMain does not run when a test panics (the panic
// happens on the test's goroutine) or calls os.Exit, but the kernel closes
// the pipe however the process ends.
func (c *Cluster) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("creating reaper pipe: %w", err)
	}
	defer r.Close()
	script := `cat >/dev/null; [ -f "$2/postmaster.pid" ] && "$1" -D "$2" -w -t 60 stop -m immediate; rm -rf "$3"`
	cmd := exec.Command("/bin/sh", "-c", script, "pgtest-reaper", c.pgCtl, c.DataDir, c.Dir)
	cmd.Stdin = r
	cmd.Dir = "/"
	// Own session, so a Ctrl-C aimed at go test does not kill it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: c.cred}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting reaper: %w", err)
	}
	c.reaper, c.lifeline = cmd, w
	return nil
}

// run runs a server program, as the postgres OS user when we are root.
func (c *Cluster) run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.Dir
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl start leaves a server behind; should it ever hold our output
	// pipe, do not wait for it forever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", filepath.Base(name), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// chown gives the server user ownership of everything under dir.
func (c *Cluster) chown(dir string) error {
	if c.cred == nil {
		return nil
	}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(c.cred.Uid), int(c.cred.Gid))
	})
	if err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	return nil
}

// logTail returns the end of the server log, to explain a failed start.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\n--- " + c.LogFile + " (tail) ---\n" + string(b)
}

func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("looking up postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing postgres uid: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parsing postgres gid: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// freePort picks a free loopback port below Linux's ephemeral range
// (32768-60999): a port the kernel hands out for port 0 lies inside it, and
// any outgoing connection can take it between this check and the server's
// bind. Ports below the range are only ever taken by an explicit bind.
func freePort() (int, error) {
	const low, high = 20000, 32768
	start := low + int(time.Now().UnixNano()%int64(high-low))
	for i := 0; i < high-low; i++ {
		port := low + (start-low+i*7919)%(high-low) // a prime stride spreads concurrent runs
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("finding free port: none free in %d-%d", low, high-1)
}

func appendFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", name, err)
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return fmt.Errorf("appending to %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", name, err)
	}
	return nil
}

// quote single-quotes a value for a connection string or postgresql.conf:
// both accept backslash-escaped quotes and backslashes inside quotes.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
