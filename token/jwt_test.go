package token

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"
)

// b64 is base64url without padding, as JWTs use.
func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// testJWT builds an unsigned JWT with the given JSON payload.
func testJWT(payload string) string {
	return b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(payload) + "." + b64("sig")
}

// jwtExpiringAt is a JWT whose exp is at (with sub-second precision, which
// the JWT NumericDate allows), unique thanks to nonce.
func jwtExpiringAt(at time.Time, nonce string) string {
	return testJWT(fmt.Sprintf(`{"exp":%.3f,"sub":"x","jti":%q}`, float64(at.UnixMilli())/1000, nonce))
}

func TestJWTExpiry(t *testing.T) {
	const exp = 1700000000
	padded := func(s string) string {
		parts := strings.Split(s, ".")
		p := base64.URLEncoding.EncodeToString([]byte(`{"exp":1700000000,"sub":"padding"}`))
		if !strings.HasSuffix(p, "=") {
			t.Fatalf("test payload %q needs padding to be a useful case", p)
		}
		return parts[0] + "." + p + "." + parts[2]
	}(testJWT("{}"))

	tests := []struct {
		name   string
		token  string
		want   time.Time
		wantOK bool
	}{
		{"exp int", testJWT(`{"exp":1700000000,"sub":"x"}`), time.Unix(exp, 0), true},
		{"exp float", testJWT(`{"exp":1700000000.5,"sub":"x"}`), time.Unix(exp, 5e8), true},
		{"exp exponent", testJWT(`{"exp":1.7e9}`), time.Unix(exp, 0), true},
		{"other claims around exp", testJWT(`{"iss":"https://sts.windows.net/x/","aud":["a","b"],"exp":1700000000,"nbf":1,"nested":{"exp":5}}`), time.Unix(exp, 0), true},
		{"padded payload", padded, time.Unix(exp, 0), true},
		{"not a JWT", "opaque-token-value", time.Time{}, false},
		{"two parts", b64(`{"alg":"none"}`) + "." + b64(`{"exp":1700000000}`), time.Time{}, false},
		{"four parts", testJWT(`{"exp":1700000000}`) + ".extra", time.Time{}, false},
		{"empty", "", time.Time{}, false},
		{"no exp", testJWT(`{"sub":"x","iat":1700000000}`), time.Time{}, false},
		{"exp null", testJWT(`{"exp":null}`), time.Time{}, false},
		{"exp not a number", testJWT(`{"exp":"tomorrow"}`), time.Time{}, false},
		{"exp zero", testJWT(`{"exp":0}`), time.Time{}, false},
		{"exp negative", testJWT(`{"exp":-5}`), time.Time{}, false},
		{"exp absurdly far", testJWT(`{"exp":1e15}`), time.Time{}, false},
		{"garbage base64", b64("h") + ".!!not*base64!!." + b64("sig"), time.Time{}, false},
		{"payload not JSON", b64("h") + "." + b64("not json") + "." + b64("sig"), time.Time{}, false},
		{"payload JSON array", b64("h") + "." + b64(`[1700000000]`) + "." + b64("sig"), time.Time{}, false},
		{"empty payload", b64("h") + ".." + b64("sig"), time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := jwtExpiry(tt.token)
			if ok != tt.wantOK {
				t.Fatalf("jwtExpiry(%q) ok = %v, want %v (got %v)", tt.token, ok, tt.wantOK, got)
			}
			if !ok {
				if !got.IsZero() {
					t.Errorf("jwtExpiry(%q) = %v with ok=false, want the zero time", tt.token, got)
				}
				return
			}
			// float64 seconds carry ~256ns of precision at this magnitude.
			if d := got.Sub(tt.want).Abs(); d > time.Microsecond {
				t.Errorf("jwtExpiry(%q) = %v, want %v", tt.token, got, tt.want)
			}
		})
	}
}

// A real Azure AD access token's layout (header and payload are JSON with
// many claims; signature binary): exp is read, the rest ignored.
func TestJWTExpiryRealisticToken(t *testing.T) {
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	payload := fmt.Sprintf(`{"aud":"https://ossrdbms-aad.database.windows.net","iss":"https://sts.windows.net/72f988bf/","iat":%d,"nbf":%d,"exp":%d,"oid":"00000000-0000-0000-0000-000000000000","upn":"someone@example.com","ver":"1.0"}`,
		exp.Add(-time.Hour).Unix(), exp.Add(-time.Hour).Unix(), exp.Unix())
	tok := b64(`{"typ":"JWT","alg":"RS256","x5t":"abc","kid":"abc"}`) + "." + b64(payload) + "." +
		base64.RawURLEncoding.EncodeToString([]byte{0xfb, 0xff, 0x00, 0x3e, 0x3f})
	got, ok := jwtExpiry(tok)
	if !ok || !got.Equal(exp) {
		t.Errorf("jwtExpiry = %v, %v; want %v, true", got, ok, exp)
	}
}
