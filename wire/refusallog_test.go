package wire

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// One refusal line per reason and address per refusalLogEvery; the rest
// are counted for the summary line, which names them by reason.
func TestRefusalLogLimit(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{log: zerolog.New(&buf)}
	r := &s.refusals
	if !r.allow("client-auth-failed", "10.0.0.1") {
		t.Fatal("first line refused")
	}
	for range 5 {
		if r.allow("client-auth-failed", "10.0.0.1") {
			t.Fatal("a repeat within the window was allowed")
		}
	}
	if !r.allow("client-auth-failed", "10.0.0.2") || !r.allow("login-rate-limited", "10.0.0.1") {
		t.Fatal("another address or reason was held back")
	}
	s.logRefusalSummary()
	line := buf.String()
	if !strings.Contains(line, `"suppressed":5`) || !strings.Contains(line, `"client-auth-failed":5`) {
		t.Errorf("summary line %q, want 5 suppressed client-auth-failed", line)
	}
	buf.Reset()
	s.logRefusalSummary()
	if buf.Len() != 0 {
		t.Errorf("a second summary with nothing left out: %q", buf.String())
	}
	// Bounded whatever addresses come.
	for i := range 3 * maxRefusalKeys {
		r.allow("protocol-violation", strings.Repeat("x", i%50)+string(rune('a'+i%26))+string(rune(i)))
	}
	if len(r.last) > maxRefusalKeys {
		t.Errorf("%d keys kept, bound %d", len(r.last), maxRefusalKeys)
	}
}
