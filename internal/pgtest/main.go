package pgtest

import (
	"fmt"
	"os"
	"testing"
)

// Set by Main before m.Run, read by Require.
var (
	current *Cluster
	missing error // why PostgreSQL is unavailable
)

// Main is for TestMain: it starts a cluster with opts, stores it in *got (if
// got is not nil), runs the tests, stops the cluster and exits with the test
// result.
//
// Without PostgreSQL binaries, it fails when CI=true (integration tests must
// not silently skip in CI); otherwise it runs the tests with *got == nil and
// Require skips them.
func Main(m *testing.M, opts Options, got **Cluster) {
	os.Exit(runMain(m, opts, got))
}

// runMain is separate so the deferred Stop runs before os.Exit.
func runMain(m *testing.M, opts Options, got **Cluster) int {
	if _, err := findBin("initdb"); err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "pgtest: PostgreSQL is required when CI=true: %v\n", err)
			return 1
		}
		missing = err
		return m.Run()
	}
	c, err := Start(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: starting cluster: %v\n", err)
		return 1
	}
	defer c.Stop()
	current = c
	if got != nil {
		*got = c
	}
	return m.Run()
}

// Require returns the cluster started by Main, or skips the test when
// PostgreSQL is not installed (outside CI).
func Require(t testing.TB) *Cluster {
	t.Helper()
	switch {
	case current != nil:
		return current
	case missing != nil:
		t.Skipf("pgtest: skipping integration test: %v", missing)
	default:
		t.Fatal("pgtest: Require needs pgtest.Main in TestMain")
	}
	return nil
}
