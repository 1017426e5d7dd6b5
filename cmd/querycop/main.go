// Command querycop is the PostgreSQL connection-pooling gateway. This
// package is the process shell: it reads the environment into one Config,
// refuses bad configuration with every problem at once (exit status 2),
// builds the logger, handles signals and exit codes, and hands over to serve.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/token"
)

// version is set at build time by scripts/build (-ldflags "-X
// main.version=1.2.3"). A plain `go build` or `go install` leaves it empty,
// and versionString reads the build information Go stamps instead.
var version = ""

// versionString is what `querycop version` and the start-up line report:
// the stamped version, else the module version (`go install ...@v1.2.3`,
// or Go's pseudo-version of the checked-out commit), else the VCS revision,
// else "dev".
func versionString() string {
	bi, _ := debug.ReadBuildInfo()
	return versionFrom(version, bi)
}

func versionFrom(stamped string, bi *debug.BuildInfo) string {
	if stamped != "" {
		return stamped
	}
	if bi == nil {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// Exit statuses.
const (
	exitOK        = 0
	exitFailed    = 1 // serve returned an error
	exitBadConfig = 2 // invalid configuration or usage
)

func main() {
	environ := os.Environ()
	// The token command inherits the process environment; drop the admin
	// key and the auth query role's password before anything can start
	// it. run still reads them from environ.
	_ = os.Unsetenv("ADMIN_API_KEY")
	_ = os.Unsetenv("GATEKEEPER_AUTH_PASSWORD")
	os.Exit(run(os.Args[1:], environ, os.Stdout, os.Stderr))
}

// run is main without the process globals, so tests can drive it.
func run(args, environ []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal starts the drain, a second one ends the
	// process even if the drain hangs.
	go func() {
		<-ctx.Done()
		second := make(chan os.Signal, 1)
		signal.Notify(second, os.Interrupt, syscall.SIGTERM)
		stop()
		sig := <-second
		// Token commands still running are in process groups of their
		// own: end them first, or they outlive the process.
		token.KillRunning()
		// Die of the signal, as with its default handling; a SIGINT that
		// was ignored when the process started (a shell's background job)
		// would be ignored again, hence the exit after it.
		signal.Stop(second)
		if s, ok := sig.(syscall.Signal); ok {
			_ = syscall.Kill(os.Getpid(), s)
			time.Sleep(100 * time.Millisecond)
			os.Exit(128 + int(s))
		}
		os.Exit(1)
	}()
	return runContext(ctx, args, environ, stdout, stderr)
}

// runContext is run with the context that serve gets, cancelled on
// SIGINT/SIGTERM in production and by the test otherwise.
func runContext(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "check" {
		return runCheck(ctx, args[1:], environ, stdout, stderr)
	}
	if len(args) > 1 {
		fmt.Fprintf(stderr, "querycop: unexpected argument %q; run \"querycop help\" for usage\n", args[1])
		return exitBadConfig
	}
	cmd := ""
	if len(args) == 1 {
		cmd = args[0]
	}
	switch cmd {
	case "help", "-h", "--help":
		printUsage(stdout)
		return exitOK
	case "healthcheck":
		return runHealthcheck(environ, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "querycop %s\n", versionString())
		return exitOK
	case "":
		cfg, ok := loadOrReport(environ, stderr)
		if !ok {
			return exitBadConfig
		}
		log := newLogger(cfg.Log, stderr)
		warnUnknown(log, environ)
		if err := serve(ctx, cfg, log); err != nil {
			log.Error().Err(err).Msg("querycop failed")
			return exitFailed
		}
		return exitOK
	default:
		fmt.Fprintf(stderr, "querycop: unknown command %q; run \"querycop help\" for the commands and variables\n", cmd)
		return exitBadConfig
	}
}

// loadOrReport loads the configuration, or prints every problem to stderr.
func loadOrReport(environ []string, stderr io.Writer) (Config, bool) {
	cfg, err := LoadConfig(environ)
	if err == nil {
		return cfg, true
	}
	fmt.Fprintln(stderr, "querycop: invalid configuration:")
	for _, p := range flatten(err) {
		fmt.Fprintf(stderr, "  - %v\n", p)
	}
	return cfg, false
}

func warnUnknown(log zerolog.Logger, environ []string) {
	for _, u := range unknownVars(environ) {
		ev := log.Warn().Str("var", u.Name)
		if u.Suggestion != "" {
			ev = ev.Str("did_you_mean", u.Suggestion)
		}
		ev.Msg("ignoring unknown variable")
	}
}

func describeUnknown(u unknownVar) string {
	s := "ignoring unknown variable " + u.Name
	if u.Suggestion != "" {
		s += " (did you mean " + u.Suggestion + "?)"
	}
	return s
}
