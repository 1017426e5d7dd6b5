package main

import (
	"flag"
	"io"
	"os"
	"testing"
)

// runMain runs the command as scripts/bench does and returns its standard
// output.
func runMain(t *testing.T, args ...string) string {
	t.Helper()
	oldArgs, oldStdout := os.Args, os.Stdout
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	os.Args = append([]string{"benchreport"}, args...)
	os.Stdout = w
	flag.CommandLine = flag.NewFlagSet("benchreport", flag.ExitOnError)
	out := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); out <- b }()
	main()
	w.Close()
	os.Args, os.Stdout = oldArgs, oldStdout
	return string(<-out)
}

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		// want-plain.md is the output of benchreport before the TLS pair and
		// the scaling table existed: the existing targets' tables must not
		// change.
		{"plain", "testdata/want-plain.md", []string{"-results", "testdata/results-plain.tsv", "-idle", "testdata/idle.tsv", "-clk-tck", "100"}},
		{"tls and scaling", "testdata/want-all.md", []string{"-results", "testdata/results-all.tsv", "-clk-tck", "100"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := os.ReadFile(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if got := runMain(t, tc.args...); got != string(want) {
				t.Errorf("output differs from %s:\n%s", tc.want, got)
			}
		})
	}
}
