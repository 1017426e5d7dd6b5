package token

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/testkit"
)

// isolateClouds points every cloud SDK's files and endpoints away from the
// machine's own, so a developer's ~/.aws, ~/.azure or gcloud login cannot
// change what the tests see.
func isolateClouds(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"HOME":                           dir,
		"AWS_CONFIG_FILE":                filepath.Join(dir, "aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE":    filepath.Join(dir, "aws-credentials"),
		"AWS_EC2_METADATA_DISABLED":      "true",
		"AZURE_CONFIG_DIR":               filepath.Join(dir, "azure"),
		"CLOUDSDK_CONFIG":                filepath.Join(dir, "gcloud"),
		"PATH":                           dir, // no az on it
		"GOOGLE_APPLICATION_CREDENTIALS": "",
	} {
		t.Setenv(k, v)
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
		"AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT",
		"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
		"AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "GCE_METADATA_HOST"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// sigV4 recomputes a presigned token's signature with testkit, which
// follows the published SigV4 algorithm rather than the SDK.
func sigV4(t *testing.T, token, secret string) (got, want string) {
	t.Helper()
	tok, err := testkit.ParseRDSToken(token)
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	return tok.Signature(secret)
}

func TestAWSRDSTokenFormAndSignature(t *testing.T) {
	isolateClouds(t)
	const akid, secret = "AKIDQUERYCOPTEST", "c2VjcmV0LXRlc3Qta2V5LW5vdC1yZWFs"
	t.Setenv("AWS_ACCESS_KEY_ID", akid)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_REGION", "us-east-1") // overridden by the variable below

	p, err := newAWSRDS(context.Background(), Config{AWSRegion: "eu-west-3"})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	tok, exp, err := p.MintTimed(context.Background(), Target{Host: "db.cluster-x.eu-west-3.rds.amazonaws.com", Port: 6432, User: "iam user+1", Database: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "db.cluster-x.eu-west-3.rds.amazonaws.com:6432?") {
		t.Fatalf("token is not for the dialled host:port: %q", tok)
	}
	_, rawQuery, _ := strings.Cut(tok, "?")
	q, _ := url.ParseQuery(rawQuery)
	day := q.Get("X-Amz-Date")
	for k, want := range map[string]string{
		"Action":              "connect",
		"DBUser":              "iam user+1",
		"X-Amz-Algorithm":     "AWS4-HMAC-SHA256",
		"X-Amz-Expires":       "900",
		"X-Amz-SignedHeaders": "host",
		"X-Amz-Credential":    akid + "/" + day[:8] + "/eu-west-3/rds-db/aws4_request",
	} {
		if got := q.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if ts, err := time.Parse("20060102T150405Z", day); err != nil || ts.Before(before.Add(-time.Minute)) || ts.After(time.Now().Add(time.Minute)) {
		t.Errorf("X-Amz-Date %q is not now (%v)", day, err)
	}
	if q.Has("X-Amz-Security-Token") {
		t.Error("static credentials without a session token, yet X-Amz-Security-Token is set")
	}
	if got, want := exp.Sub(before), RDSTokenLifetime; got < want-time.Second || got > want+5*time.Second {
		t.Errorf("expiry %s after minting, want 15m", got)
	}
	got, want := sigV4(t, tok, secret)
	if got == "" || got != want {
		t.Errorf("signature %q, recomputed %q", got, want)
	}
	secretOf := func(k string) (string, bool) { return secret, k == akid }
	if err := testkit.VerifyRDSToken(tok, "db.cluster-x.eu-west-3.rds.amazonaws.com:6432", "iam user+1", secretOf, time.Now()); err != nil {
		t.Errorf("token does not verify as RDS would: %v", err)
	}
	if err := testkit.VerifyRDSToken(tok, "db.cluster-x.eu-west-3.rds.amazonaws.com:5432", "iam user+1", secretOf, time.Now()); err == nil {
		t.Error("a token verified for another port")
	}
	// A wrong key must not verify: the check above can fail.
	if _, other := sigV4(t, tok, secret+"x"); other == got {
		t.Error("the signature check accepts any key")
	}

	id, err := p.Identity(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(id, akid) || strings.Contains(id, secret) || strings.Contains(id, tok) {
		t.Errorf("identity without STS should name the access key only: %q", id)
	}
}

// stsStandIn answers AssumeRoleWithWebIdentity and GetCallerIdentity as
// AWS STS does (query protocol, XML).
func stsStandIn(t *testing.T, credsExpire time.Time, webToken string, calls *atomic.Int32) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "text/xml")
		switch r.Form.Get("Action") {
		case "AssumeRoleWithWebIdentity":
			calls.Add(1)
			if r.Form.Get("WebIdentityToken") != webToken || r.Form.Get("RoleArn") != "arn:aws:iam::123456789012:role/querycop" {
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprint(w, `<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>bad web identity</Message></Error></ErrorResponse>`)
				return
			}
			fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>
<Credentials><AccessKeyId>ASIAWEBIDENTITY</AccessKeyId><SecretAccessKey>web-secret</SecretAccessKey><SessionToken>web-session</SessionToken><Expiration>%s</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/querycop/s1</Arn><AssumedRoleId>AROA:s1</AssumedRoleId></AssumedRoleUser>
</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`, credsExpire.UTC().Format(time.RFC3339))
		case "GetCallerIdentity":
			if !strings.Contains(r.Header.Get("Authorization"), "Credential=ASIAWEBIDENTITY/") {
				w.WriteHeader(http.StatusForbidden)
				return
			}
			fmt.Fprint(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>
<Arn>arn:aws:sts::123456789012:assumed-role/querycop/s1</Arn><UserId>AROA:s1</UserId><Account>123456789012</Account>
</GetCallerIdentityResult><ResponseMetadata><RequestId>r2</RequestId></ResponseMetadata></GetCallerIdentityResponse>`)
		default:
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestAWSRDSWebIdentity: EKS IRSA's flow (a projected token file and a
// role) against a local STS; the token carries the session token, lasts no
// longer than the role credentials, and check's identity comes from STS.
func TestAWSRDSWebIdentity(t *testing.T) {
	isolateClouds(t)
	var calls atomic.Int32
	credsExpire := time.Now().Add(10 * time.Minute).Truncate(time.Second)
	srv := stsStandIn(t, credsExpire, "projected-sa-token", &calls)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("projected-sa-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/querycop")
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", tokenFile)
	t.Setenv("AWS_ENDPOINT_URL_STS", srv.URL)
	t.Setenv("AWS_REGION", "us-west-2")

	p, err := newAWSRDS(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := p.MintTimed(context.Background(), Target{Host: "127.0.0.1", Port: 5432, User: "app"})
	if err != nil {
		t.Fatal(err)
	}
	_, rawQuery, _ := strings.Cut(tok, "?")
	q, _ := url.ParseQuery(rawQuery)
	if q.Get("X-Amz-Security-Token") != "web-session" || !strings.HasPrefix(q.Get("X-Amz-Credential"), "ASIAWEBIDENTITY/") {
		t.Errorf("token not signed with the web identity's credentials: %v", q)
	}
	if got, want := sigV4(t, tok, "web-secret"); got != want {
		t.Errorf("signature %q, recomputed %q", got, want)
	}
	if !exp.Equal(credsExpire) {
		t.Errorf("expiry %s, want the credentials' %s (sooner than 15m)", exp, credsExpire)
	}
	if calls.Load() != 1 {
		t.Errorf("STS asked %d times, want 1", calls.Load())
	}
	id, err := p.Identity(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"account 123456789012", "arn:aws:sts::123456789012:assumed-role/querycop/s1", "ASIAWEBIDENTITY"} {
		if !strings.Contains(id, want) {
			t.Errorf("identity %q lacks %q", id, want)
		}
	}
	if strings.Contains(id, "web-secret") || strings.Contains(id, "web-session") {
		t.Errorf("identity shows a secret: %q", id)
	}

	// A refused web identity is a provider failure in the documented form.
	if err := os.WriteFile(tokenFile, []byte("someone-else"), 0o600); err != nil {
		t.Fatal(err)
	}
	p2, err := newAWSRDS(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = p2.MintTimed(context.Background(), Target{Host: "127.0.0.1", Port: 5432, User: "app"})
	var te *Error
	if !errors.As(err, &te) || !strings.HasPrefix(err.Error(), "backend token provider failed: aws-rds: getting AWS credentials: ") ||
		strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Errorf("error %q", err)
	}
}

func TestAWSRDSNeedsRegion(t *testing.T) {
	isolateClouds(t)
	_, err := newAWSRDS(context.Background(), Config{})
	if err == nil || !strings.Contains(err.Error(), "GATEKEEPER_BACKEND_TOKEN_AWS_REGION") {
		t.Fatalf("err = %v, want one naming GATEKEEPER_BACKEND_TOKEN_AWS_REGION", err)
	}
}

// fakeJWT is an unsigned token with Entra-like claims; the server is what
// checks signatures, and here the server is PostgreSQL with a password.
func fakeJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(b) + "." + enc([]byte("sig"))
}

// appServiceIdentity is a local stand-in for App Service's managed identity
// endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER), handing out tokens that
// live ttl.
func appServiceIdentity(t *testing.T, tok string, ttl time.Duration, clientID string, hits *atomic.Int32) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("X-IDENTITY-HEADER") != "header-secret" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_request","error_description":"missing X-IDENTITY-HEADER"}`)
			return
		}
		if r.URL.Query().Get("resource") != strings.TrimSuffix(AzureScope, "/.default") || r.URL.Query().Get("client_id") != clientID {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_resource","error_description":"resource %q client %q"}`, r.URL.Query().Get("resource"), r.URL.Query().Get("client_id"))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":%q,"expires_on":"%d","resource":"https://ossrdbms-aad.database.windows.net","token_type":"Bearer","client_id":"x"}`,
			tok, time.Now().Add(ttl).Unix())
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestAzureManagedIdentity(t *testing.T) {
	isolateClouds(t)
	jwt := fakeJWT(map[string]any{"oid": "0b5c-oid", "upn": "gateway@contoso.example", "tid": "tenant-1"})
	var hits atomic.Int32
	srv := appServiceIdentity(t, jwt, 90*time.Second, "user-assigned-id", &hits)
	t.Setenv("IDENTITY_ENDPOINT", srv.URL)
	t.Setenv("IDENTITY_HEADER", "header-secret")

	m, err := NewMinter(context.Background(), Config{Provider: "azure", AzureClientID: "user-assigned-id"})
	if err != nil {
		t.Fatal(err)
	}
	p := m.(builtinProvider)
	for i := range 2 {
		tok, exp, err := p.MintTimed(context.Background(), Target{User: "app"})
		if err != nil {
			t.Fatal(err)
		}
		if tok != jwt || time.Until(exp) < 80*time.Second || time.Until(exp) > 100*time.Second {
			t.Fatalf("mint %d: token or expiry wrong (expires in %s)", i, time.Until(exp))
		}
	}
	// Tokens this short are not served from the SDK's cache (it keeps a
	// token only while more than 5 minutes are left).
	if hits.Load() != 2 {
		t.Errorf("endpoint asked %d times, want 2", hits.Load())
	}
	id, err := p.Identity(context.Background(), jwt)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"object ID 0b5c-oid", "upn gateway@contoso.example", "tenant tenant-1", "through managed identity"} {
		if !strings.Contains(id, want) {
			t.Errorf("identity %q lacks %q", id, want)
		}
	}

	// A wrong header: the endpoint refuses; documented form, one line.
	t.Setenv("IDENTITY_HEADER", "wrong")
	m2, _ := NewMinter(context.Background(), Config{Provider: "azure", AzureClientID: "user-assigned-id"})
	_, err = m2.Mint(context.Background(), Target{User: "app"})
	if err == nil || !strings.HasPrefix(err.Error(), "backend token provider failed: azure: no credential gave a token: managed identity: ") ||
		strings.Contains(err.Error(), "\n") || len(err.Error()) > 800 {
		t.Errorf("error %q", err)
	}
}

// TestAzureOffAzure: with no managed identity endpoint and no IMDS, the
// chain does not hang in the SDK's retries: it ends at the Azure CLI, which
// is not installed here, and says so for each source.
func TestAzureOffAzure(t *testing.T) {
	isolateClouds(t)
	old := imdsAddr
	imdsAddr = "127.0.0.1:1" // nothing listens there
	t.Cleanup(func() { imdsAddr = old })
	m, err := NewMinter(context.Background(), Config{Provider: "azure"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = m.Mint(ctx, Target{User: "app"})
	if err == nil {
		t.Fatal("minted without any Azure identity")
	}
	for _, want := range []string{"backend token provider failed: azure: ", "managed identity: no instance metadata service", "Azure CLI: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if ctx.Err() != nil {
		t.Error("the chain ran into the 30s bound")
	}
}

// gceMetadata emulates the Compute Engine metadata server.
func gceMetadata(t *testing.T, tok string, ttl time.Duration, hits *atomic.Int32, scopes *atomic.Value) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		switch r.URL.Path {
		case "/computeMetadata/v1/instance/service-accounts/default/token":
			hits.Add(1)
			scopes.Store(r.URL.Query().Get("scopes"))
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"access_token":%q,"expires_in":%d,"token_type":"Bearer"}`, tok, int(ttl.Seconds()))
		case "/computeMetadata/v1/instance/service-accounts/default/email":
			fmt.Fprint(w, "gateway@proj-1.iam.gserviceaccount.com")
		case "/computeMetadata/v1/project/project-id":
			fmt.Fprint(w, "proj-1")
		case "/computeMetadata/v1/universe/universe-domain":
			fmt.Fprint(w, "googleapis.com")
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestGCPMetadataServer(t *testing.T) {
	isolateClouds(t)
	var hits atomic.Int32
	var scopes atomic.Value
	srv := gceMetadata(t, "ya29.test-token", 120*time.Second, &hits, &scopes)
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(srv.URL, "http://"))

	cfg := Config{Provider: "gcp", GCPScopes: "https://www.googleapis.com/auth/sqlservice.login, https://www.googleapis.com/auth/alloydb.login"}
	m, err := NewMinter(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := m.(builtinProvider)
	for range 2 {
		tok, exp, err := p.MintTimed(context.Background(), Target{User: "gateway@proj-1.iam"})
		if err != nil {
			t.Fatal(err)
		}
		if tok != "ya29.test-token" || time.Until(exp) < 110*time.Second || time.Until(exp) > 125*time.Second {
			t.Fatalf("token or expiry wrong (expires in %s)", time.Until(exp))
		}
	}
	if hits.Load() != 2 {
		t.Errorf("metadata asked %d times, want 2 (no client-side cache)", hits.Load())
	}
	if got := scopes.Load(); got != "https://www.googleapis.com/auth/sqlservice.login,https://www.googleapis.com/auth/alloydb.login" {
		t.Errorf("scopes asked for: %q", got)
	}
	id, err := p.Identity(context.Background(), "ya29.test-token")
	if err != nil || !strings.Contains(id, "gateway@proj-1.iam.gserviceaccount.com") {
		t.Errorf("identity %q, %v", id, err)
	}
}

// TestProviderThroughSource: a provider's expiry governs the cache, and a
// provider failure reaches callers in the documented form, stamped with the
// provider even for the Source's own texts.
func TestProviderThroughSource(t *testing.T) {
	isolateClouds(t)
	var hits atomic.Int32
	var scopes atomic.Value
	srv := gceMetadata(t, "ya29.source-token", 400*time.Second, &hits, &scopes)
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(srv.URL, "http://"))
	m, err := NewMinter(context.Background(), Config{Provider: "gcp", GCPScopes: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	s := NewSource(Config{Reuse: true, Lifetime: time.Hour, RefreshMargin: 100 * time.Second}, m)
	defer s.Close()
	tok, err := s.Token(context.Background(), Target{Host: "h", Port: 1, User: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(tok.Expiry); d > 401*time.Second || d < 390*time.Second {
		t.Errorf("expiry in %s: the provider's 400s should win over the 1h lifetime", d)
	}
	if s.Provider() != "gcp" {
		t.Errorf("Provider() = %q", s.Provider())
	}

	// A token too short-lived to log in with: the Source's own text,
	// worded for a provider.
	s2 := NewSource(Config{Reuse: true, Lifetime: time.Hour, RefreshMargin: 100 * time.Second}, m)
	s2.LoginSafety = 500 * time.Second
	defer s2.Close()
	_, err = s2.Token(context.Background(), Target{Host: "h", Port: 1, User: "u"})
	if err == nil || !strings.HasPrefix(err.Error(), "backend token provider failed: gcp: the provider returned a token that expires at ") ||
		!strings.HasSuffix(err.Error(), "or the provider's own cache") {
		t.Errorf("error %q", err)
	}
}

func TestErrorTexts(t *testing.T) {
	if got := (&Error{Reason: "x"}).Error(); got != "backend token command failed: x" {
		t.Errorf("command: %q", got)
	}
	if got := (&Error{Provider: "command", Reason: "x"}).Error(); got != "backend token command failed: x" {
		t.Errorf("command by name: %q", got)
	}
	if got := providerError("aws-rds", errors.New("line one\n\tline two")).Error(); got != "backend token provider failed: aws-rds: line one line two" {
		t.Errorf("provider: %q", got)
	}
	long := providerError("azure", errors.New(strings.Repeat("é", 2000))).Error()
	if len(long) > len("backend token provider failed: azure: ")+maxReason+len("…") || !strings.HasSuffix(long, "…") {
		t.Errorf("cause not bounded: %d bytes", len(long))
	}
	// An SDK error that quotes a response body with a token in it.
	jwt := fakeJWT(map[string]any{"oid": "x"})
	leaky := providerError("gcp", fmt.Errorf(`oauth2: cannot fetch token: 400 Bad Request Response: {"access_token":%q,"refresh":"1//0gAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef"}`, jwt)).Error()
	if strings.Contains(leaky, jwt[:20]) || strings.Contains(leaky, "1//0gAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef") || !strings.Contains(leaky, "400 Bad Request") {
		t.Errorf("provider error not masked: %q", leaky)
	}
}

func TestValidateProvider(t *testing.T) {
	base := Config{Timeout: time.Second, Lifetime: time.Hour, RefreshMargin: time.Minute, GCPScopes: "s"}
	cases := []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"azure", func(c *Config) { c.Provider = "azure" }, ""},
		{"aws", func(c *Config) { c.Provider = "aws-rds"; c.AWSRegion = "eu-west-1" }, ""},
		{"command", func(c *Config) { c.Provider = "command"; c.Cmd = "echo t" }, ""},
		{"command alone", func(c *Config) { c.Cmd = "echo t" }, ""},
		{"unknown", func(c *Config) { c.Provider = "vault" }, `GATEKEEPER_BACKEND_TOKEN_PROVIDER="vault" is not a token provider`},
		{"both", func(c *Config) { c.Provider = "gcp"; c.Cmd = "gcloud auth print-access-token" },
			"GATEKEEPER_BACKEND_TOKEN_PROVIDER=gcp and GATEKEEPER_BACKEND_TOKEN_CMD are both set"},
		{"command without one", func(c *Config) { c.Provider = "command" }, "GATEKEEPER_BACKEND_TOKEN_PROVIDER=command needs GATEKEEPER_BACKEND_TOKEN_CMD"},
		{"stray client id", func(c *Config) { c.Provider = "gcp"; c.AzureClientID = "x" }, "GATEKEEPER_BACKEND_TOKEN_AZURE_CLIENT_ID is set but"},
		{"stray region", func(c *Config) { c.Cmd = "x"; c.AWSRegion = "x" }, "GATEKEEPER_BACKEND_TOKEN_AWS_REGION is set but"},
		{"no scopes", func(c *Config) { c.Provider = "gcp"; c.GCPScopes = " , " }, "GATEKEEPER_BACKEND_TOKEN_GCP_SCOPES is empty"},
	}
	for _, tc := range cases {
		c := base
		tc.mod(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && c.Cmd != "" && strings.Contains(err.Error(), c.Cmd) {
			t.Errorf("%s: the command is echoed: %v", tc.name, err)
		}
	}
}

// TestAzureConfiguredSourceIsNotPassedOver: with a workload identity
// configured, its failure is reported; the chain does not go on to a
// managed identity that answers (on AKS that would be the node's identity,
// someone else).
func TestAzureConfiguredSourceIsNotPassedOver(t *testing.T) {
	isolateClouds(t)
	var hits atomic.Int32
	srv := appServiceIdentity(t, fakeJWT(map[string]any{"oid": "node"}), time.Minute, "wi-client", &hits)
	t.Setenv("IDENTITY_ENDPOINT", srv.URL)
	t.Setenv("IDENTITY_HEADER", "header-secret")
	tokenFile := filepath.Join(t.TempDir(), "federated")
	if err := os.WriteFile(tokenFile, []byte("sa-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AZURE_FEDERATED_TOKEN_FILE", tokenFile)
	t.Setenv("AZURE_CLIENT_ID", "wi-client")
	t.Setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000001")
	t.Setenv("AZURE_AUTHORITY_HOST", "https://127.0.0.1:1/") // nothing listens
	m, err := NewMinter(context.Background(), Config{Provider: "azure"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = m.Mint(ctx, Target{User: "app"})
	if err == nil || !strings.Contains(err.Error(), "workload identity: ") || strings.Contains(err.Error(), "managed identity") {
		t.Errorf("err = %v, want the workload identity's failure alone", err)
	}
	if hits.Load() != 0 {
		t.Errorf("the managed identity endpoint was asked %d times", hits.Load())
	}
}

// TestProviderTimeout: an identity endpoint that accepts the request and
// never answers costs GATEKEEPER_BACKEND_TOKEN_TIMEOUT, not a hung login.
func TestProviderTimeout(t *testing.T) {
	isolateClouds(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(time.Minute):
		}
	}))
	defer srv.Close()
	defer close(release)
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(srv.URL, "http://"))
	m, err := NewMinter(context.Background(), Config{Provider: "gcp", GCPScopes: "s", Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = m.Mint(context.Background(), Target{User: "u"})
	if err == nil || err.Error() != "backend token provider failed: gcp: timed out after 500ms" {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the mint took %s", d)
	}
}
