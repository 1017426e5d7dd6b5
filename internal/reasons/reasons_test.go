package reasons

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docReasons returns the reasons named in the first column of the table
// under the heading of docs/operations.md that starts with heading.
func docReasons(t *testing.T, heading string) []string {
	t.Helper()
	data, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	at := strings.Index(text, "\n"+heading)
	if at < 0 {
		t.Fatalf("docs/operations.md has no heading %q", heading)
	}
	section := text[at+1:]
	if end := strings.Index(section, "\n### "); end >= 0 {
		section = section[:end]
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\|")
	var out []string
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		if m[1] != "reason" {
			out = append(out, m[1])
		}
	}
	return out
}

func names(rs []Reason) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	slices.Sort(out)
	return out
}

// TestOperationsDocMatchesReasons keeps docs/operations.md's reason tables
// and this package's closed set in step.
func TestOperationsDocMatchesReasons(t *testing.T) {
	for _, tc := range []struct {
		heading string
		kind    Kind
	}{
		{"### 3.2 Why backend connections close", ConnClose},
		{"### 3.3 Why clients are refused", Refusal},
	} {
		doc := docReasons(t, tc.heading)
		slices.Sort(doc)
		if code := names(Of(tc.kind)); !slices.Equal(doc, code) {
			t.Errorf("%s lists %v; the code's reasons are %v", tc.heading, doc, code)
		}
	}
	// §3.4 lists the session ends that are not refusals (those are
	// referred to as a group).
	doc := docReasons(t, "### 3.4 Why sessions end")
	for _, r := range Of(Disconnect) {
		if r.Info().Kinds&Refusal == 0 && !slices.Contains(doc, string(r)) {
			t.Errorf("§3.4 does not list the session end %q", r)
		}
	}
	for _, d := range doc {
		if Reason(d).Info().Kinds&Disconnect == 0 {
			t.Errorf("§3.4 lists %q, which is not a session-end reason in the code", d)
		}
	}
}
