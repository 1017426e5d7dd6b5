package testkit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"
)

// RDSToken is an RDS IAM authentication token taken apart: a presigned
// "GET https://host:port/?Action=connect&DBUser=..." without the scheme.
type RDSToken struct {
	HostPort string
	Query    url.Values
}

// ParseRDSToken splits token into its host:port and query.
func ParseRDSToken(token string) (RDSToken, error) {
	hostPort, rawQuery, ok := strings.Cut(token, "?")
	if !ok || hostPort == "" {
		return RDSToken{}, errors.New("not host:port?query")
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return RDSToken{}, err
	}
	return RDSToken{HostPort: strings.TrimSuffix(hostPort, "/"), Query: q}, nil
}

// Signature recomputes the token's SigV4 signature with secret, following
// the published algorithm (canonical request, string to sign, derived key)
// rather than any SDK, and returns it with the one the token carries.
func (t RDSToken) Signature(secret string) (got, want string) {
	q := url.Values{}
	for k, v := range t.Query {
		q[k] = v
	}
	got = q.Get("X-Amz-Signature")
	q.Del("X-Amz-Signature")
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	enc := func(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }
	pairs := make([]string, 0, len(keys))
	for _, k := range keys {
		pairs = append(pairs, enc(k)+"="+enc(q.Get(k)))
	}
	emptySHA := sha256.Sum256(nil)
	canonical := strings.Join([]string{
		"GET", "/", strings.Join(pairs, "&"),
		"host:" + t.HostPort + "\n", "host", hex.EncodeToString(emptySHA[:]),
	}, "\n")
	_, scope, _ := strings.Cut(q.Get("X-Amz-Credential"), "/")
	sum := sha256.Sum256([]byte(canonical))
	toSign := strings.Join([]string{"AWS4-HMAC-SHA256", q.Get("X-Amz-Date"), scope, hex.EncodeToString(sum[:])}, "\n")
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	parts := strings.Split(scope, "/") // date/region/service/aws4_request
	k := mac([]byte("AWS4"+secret), parts[0])
	for _, p := range parts[1:] {
		k = mac(k, p)
	}
	return got, hex.EncodeToString(mac(k, toSign))
}

// VerifyRDSToken checks token as RDS would before a login: for hostPort
// and user, Action=connect, signed for the rds-db service with the secret
// of its access key (secretOf), and not expired at now.
func VerifyRDSToken(token, hostPort, user string, secretOf func(accessKey string) (string, bool), now time.Time) error {
	t, err := ParseRDSToken(token)
	if err != nil {
		return err
	}
	q := t.Query
	switch {
	case t.HostPort != hostPort:
		return fmt.Errorf("signed for %s, not %s", t.HostPort, hostPort)
	case q.Get("Action") != "connect":
		return fmt.Errorf("Action=%q", q.Get("Action"))
	case q.Get("DBUser") != user:
		return fmt.Errorf("signed for user %q, not %q", q.Get("DBUser"), user)
	case q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" || q.Get("X-Amz-SignedHeaders") != "host":
		return errors.New("not a SigV4 presigned URL signing the host header")
	}
	cred := strings.Split(q.Get("X-Amz-Credential"), "/")
	if len(cred) != 5 || cred[3] != "rds-db" || cred[4] != "aws4_request" {
		return fmt.Errorf("credential scope %q is not rds-db's", q.Get("X-Amz-Credential"))
	}
	secret, ok := secretOf(cred[0])
	if !ok {
		return fmt.Errorf("unknown access key %s", cred[0])
	}
	signed, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		return fmt.Errorf("X-Amz-Date: %w", err)
	}
	if q.Get("X-Amz-Expires") != "900" {
		return fmt.Errorf("X-Amz-Expires=%q, want 900", q.Get("X-Amz-Expires"))
	}
	if now.After(signed.Add(15*time.Minute)) || now.Before(signed.Add(-5*time.Minute)) {
		return fmt.Errorf("signed at %s: expired or from the future", signed)
	}
	if got, want := t.Signature(secret); got == "" || !hmac.Equal([]byte(got), []byte(want)) {
		return errors.New("the signature does not verify")
	}
	return nil
}
