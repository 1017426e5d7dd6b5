package token

import (
	"testing"
	"time"
)

func FuzzJWTExpiry(f *testing.F) {
	f.Add("eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDAwMDB9.c2ln")
	f.Add("a.b.c")
	f.Add("opaque-token-ya29")
	f.Add("x.eyJleHAiOiAxZTMwMH0.y")
	f.Fuzz(func(t *testing.T, tok string) {
		exp, ok := jwtExpiry(tok)
		if ok && (exp.Before(time.Unix(0, 0)) || exp.Year() > 5200) {
			t.Fatalf("implausible expiry %v accepted from %q", exp, tok)
		}
	})
}
