package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// The built-in token providers end to end: the real binary in front of the
// test cluster, each cloud SDK talking to a local stand-in of its identity
// endpoint. The stand-in's token is the test role's password, so the login
// through the gateway is a real one. The stand-ins hand out tokens that live
// a few seconds, and clients keep connecting over several lifetimes.

// providerTTL is the lifetime of the stand-ins' tokens. The gateway does not
// log in with a token in its last connect timeout (2s here) plus 30s of
// clock skew, so each token serves new logins for 8s, and the next is asked
// for after 80% of that: a new token about every 6.4s.
const (
	providerTTL     = 40 * time.Second
	providerUsable  = 8 * time.Second
	providerMargin  = "5s"
	providerConnect = "2s"
)

func fakeEntraJWT(oid, upn string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{"oid": oid, "upn": upn, "tid": "tenant-e2e", "aud": "https://ossrdbms-aad.database.windows.net"})
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(claims) + "." + enc([]byte("not-checked-by-the-test-server"))
}

// createTokenRole makes a login role whose password is tok.
func createTokenRole(t *testing.T, c *pgtest.Cluster, role, tok string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := fmt.Sprintf(`DROP ROLE IF EXISTS "%s"; CREATE ROLE "%s" LOGIN PASSWORD '%s'`, role, role, tok)
	if err := c.Exec(ctx, q); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Exec(ctx, fmt.Sprintf(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'; DROP ROLE IF EXISTS "%s"`, role, role))
	})
}

// providerEnv is the gateway's environment for a provider against c.
func providerEnv(c *pgtest.Cluster, provider string, extra ...string) []string {
	return append([]string{
		"GATEKEEPER_BACKEND_HOST=localhost",
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_PROVIDER=" + provider,
		"GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN=" + providerMargin,
		"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=" + providerConnect,
		// Idle backends close quickly, so clients keep needing new logins.
		"GATEKEEPER_POOL_MAX_CONN_IDLE_TIME=1s",
		"HOME=" + c.Dir,
		"PATH=/nonexistent", // no az, aws or gcloud to fall back on
	}, extra...)
}

// churn connects as role through p every 150ms for d, runs a query on each
// connection and returns the failures; every connection must be served.
func churn(t *testing.T, p *process, role string, d time.Duration) (ok int, failures []string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := 0; time.Now().Before(deadline) && i < 1000; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user='%s' password=ignored dbname=%s sslmode=disable", p.port, role, pgtest.Database))
		if err == nil {
			var who string
			who, err = testkit.Query(ctx, conn, "SELECT current_user")
			if err == nil && who != role {
				err = fmt.Errorf("logged in as %q, want %q", who, role)
			}
			conn.Close(ctx)
		}
		cancel()
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
		} else {
			ok++
		}
		time.Sleep(150 * time.Millisecond)
	}
	return ok, failures
}

// checkProviderRun runs churn over several token lifetimes and checks that
// no client was refused, that the stand-in was asked again as tokens aged,
// and what /v1/token says.
func checkProviderRun(t *testing.T, p *process, provider, role, tok string, hits *atomic.Int32) {
	t.Helper()
	d := 3*providerUsable + 2*time.Second
	ok, failures := churn(t, p, role, d)
	if len(failures) > 0 {
		t.Errorf("%d of %d connections refused:\n%s", len(failures), ok+len(failures), strings.Join(failures, "\n"))
	}
	if ok < 20 {
		t.Errorf("only %d connections made", ok)
	}
	// Three usable windows and more: at least four tokens; and a bounded
	// number of requests (one per 80% of a window, with some slack), not
	// one per connection.
	if n := hits.Load(); n < 4 || n > 12 {
		t.Errorf("the identity endpoint was asked %d times over %s; want 4 to 12", n, d)
	}
	status, body := p.get(t, "/v1/token")
	var v struct {
		Mode     string `json:"mode"`
		Provider string `json:"provider"`
		Tokens   []struct {
			User     string `json:"user"`
			Mints    int    `json:"mints"`
			Failures int    `json:"failures"`
		} `json:"tokens"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &v) != nil {
		t.Fatalf("/v1/token: %d %s", status, body)
	}
	if v.Mode != "token" || v.Provider != provider || len(v.Tokens) != 1 || v.Tokens[0].User != role || v.Tokens[0].Mints < 4 || v.Tokens[0].Failures != 0 {
		t.Errorf("/v1/token: %s", body)
	}
	if strings.Contains(string(body), tok) {
		t.Error("/v1/token shows the token")
	}
	_, metrics := p.get(t, "/metrics")
	if !strings.Contains(string(metrics), fmt.Sprintf(`querycop_token_provider{provider=%q} 1`, provider)) {
		t.Errorf("/metrics lacks the provider gauge")
	}
	if strings.Contains(p.stderr.String(), tok) {
		t.Error("the gateway logged the token")
	}
}

func TestProviderAzureManagedIdentity(t *testing.T) {
	c := pgtest.Require(t)
	role := "querycop-mi"
	tok := fakeEntraJWT("11111111-aaaa-4bbb-8ccc-000000000001", "querycop-mi@contoso.example")
	createTokenRole(t, c, role, tok)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-IDENTITY-HEADER") != "e2e-header" || r.URL.Query().Get("resource") != "https://ossrdbms-aad.database.windows.net" ||
			r.URL.Query().Get("client_id") != "mi-client-id" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_request"}`)
			return
		}
		hits.Add(1)
		fmt.Fprintf(w, `{"access_token":%q,"expires_on":"%d","resource":"https://ossrdbms-aad.database.windows.net","token_type":"Bearer"}`,
			tok, time.Now().Add(providerTTL).Unix())
	}))
	defer srv.Close()
	p := startQuerycop(t, c, providerEnv(c, "azure",
		"IDENTITY_ENDPOINT="+srv.URL, "IDENTITY_HEADER=e2e-header",
		"GATEKEEPER_BACKEND_TOKEN_AZURE_CLIENT_ID=mi-client-id")...)
	checkProviderRun(t, p, "azure", role, tok, &hits)
}

// TestProviderAzureWorkloadIdentity: AKS's workload identity (a federated
// token file exchanged at Entra ID), the authority being a local TLS server
// whose CA the gateway trusts through SSL_CERT_FILE.
func TestProviderAzureWorkloadIdentity(t *testing.T) {
	c := pgtest.Require(t)
	role := "querycop-wi"
	tok := fakeEntraJWT("11111111-aaaa-4bbb-8ccc-000000000002", "querycop-wi@contoso.example")
	createTokenRole(t, c, role, tok)

	dir := t.TempDir()
	ca, err := pgtest.NewCA(dir, "entra")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue(dir, "entra-server", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	assertion := filepath.Join(dir, "azure-identity-token")
	if err := os.WriteFile(assertion, []byte("projected-service-account-jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	const tenant = "00000000-tttt-4000-8000-000000000000"
	var hits atomic.Int32
	var base string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/" + tenant + "/v2.0/.well-known/openid-configuration":
			fmt.Fprintf(w, `{"token_endpoint":"%[1]s/%[2]s/oauth2/v2.0/token","authorization_endpoint":"%[1]s/%[2]s/oauth2/v2.0/authorize","issuer":"%[1]s/%[2]s/v2.0"}`, base, tenant)
		case "/" + tenant + "/oauth2/v2.0/token":
			_ = r.ParseForm()
			if r.Form.Get("client_assertion") != "projected-service-account-jwt" || r.Form.Get("client_id") != "wi-client-id" ||
				!strings.Contains(r.Form.Get("scope"), "https://ossrdbms-aad.database.windows.net/.default") {
				w.WriteHeader(http.StatusUnauthorized)
				fmt.Fprint(w, `{"error":"invalid_client","error_description":"AADSTS700213: no matching federated identity record"}`)
				return
			}
			hits.Add(1)
			fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":%d,"ext_expires_in":%d,"access_token":%q}`, int(providerTTL.Seconds()), int(providerTTL.Seconds()), tok)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	base = srv.URL

	p := startQuerycop(t, c, providerEnv(c, "azure",
		"AZURE_FEDERATED_TOKEN_FILE="+assertion, "AZURE_CLIENT_ID=wi-client-id", "AZURE_TENANT_ID="+tenant,
		"AZURE_AUTHORITY_HOST="+srv.URL+"/", "SSL_CERT_FILE="+ca.CertFile)...)
	checkProviderRun(t, p, "azure", role, tok, &hits)
}

// gceStandIn emulates the metadata server of Compute Engine (and of GKE's
// workload identity), found through GCE_METADATA_HOST.
func gceStandIn(t *testing.T, tok string, hits *atomic.Int32) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		switch r.URL.Path {
		case "/computeMetadata/v1/instance/service-accounts/default/token":
			if !strings.Contains(r.URL.Query().Get("scopes"), "https://www.googleapis.com/auth/sqlservice.login") {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			hits.Add(1)
			fmt.Fprintf(w, `{"access_token":%q,"expires_in":%d,"token_type":"Bearer"}`, tok, int(providerTTL.Seconds()))
		case "/computeMetadata/v1/instance/service-accounts/default/email":
			fmt.Fprint(w, "querycop@proj-e2e.iam.gserviceaccount.com")
		case "/computeMetadata/v1/project/project-id":
			fmt.Fprint(w, "proj-e2e")
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestProviderGCPMetadataServer(t *testing.T) {
	c := pgtest.Require(t)
	// A service account's Cloud SQL / AlloyDB user name: its e-mail without
	// .gserviceaccount.com.
	role := "querycop@proj-e2e.iam"
	tok := "ya29.e2e-metadata-token-for-querycop"
	createTokenRole(t, c, role, tok)
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			var hits atomic.Int32
			srv := gceStandIn(t, tok, &hits)
			p := startQuerycop(t, c, providerEnv(c, "gcp", "GCE_METADATA_HOST="+strings.TrimPrefix(srv.URL, "http://"),
				"GATEKEEPER_POOL_MODE="+mode)...)
			checkProviderRun(t, p, "gcp", role, tok, &hits)
		})
	}
}

// TestProviderStartupRefusals: a provider needs TLS like the command, and a
// provider with a command is an error naming both.
func TestProviderStartupRefusals(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure", "GATEKEEPER_BACKEND_TLS_MODE=prefer"},
			"GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure but GATEKEEPER_BACKEND_TLS_MODE=prefer, which can fall back to plaintext and would leak the token"},
		{[]string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=gcp", "GATEKEEPER_BACKEND_TLS_MODE=disable"},
			"GATEKEEPER_BACKEND_TOKEN_PROVIDER=gcp but GATEKEEPER_BACKEND_TLS_MODE=disable, which sends the token in plaintext"},
		{[]string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=aws-rds", "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_CMD=aws rds generate-db-auth-token"},
			"GATEKEEPER_BACKEND_TOKEN_PROVIDER=aws-rds and GATEKEEPER_BACKEND_TOKEN_CMD are both set"},
	} {
		_, err := LoadConfig(append([]string{"GATEKEEPER_BACKEND_HOST=db.example.com"}, tc.env...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.env, err, tc.want)
		}
	}
}

// TestCheckNamesProviderIdentity: `querycop check` says which provider
// minted and whom the token stands for, never the token.
func TestCheckNamesProviderIdentity(t *testing.T) {
	c := pgtest.Require(t)
	role := "querycop-check-mi"
	tok := fakeEntraJWT("11111111-aaaa-4bbb-8ccc-000000000003", "check-mi@contoso.example")
	createTokenRole(t, c, role, tok)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"access_token":%q,"expires_on":"%d","token_type":"Bearer"}`, tok, time.Now().Add(time.Hour).Unix())
	}))
	defer srv.Close()
	// The SDKs read their own variables from the process environment.
	t.Setenv("IDENTITY_ENDPOINT", srv.URL)
	t.Setenv("IDENTITY_HEADER", "h")
	env := []string{
		"GATEKEEPER_BACKEND_HOST=localhost",
		fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure",
	}
	var out, errb bytes.Buffer
	code := runCheck(context.Background(), []string{"-user", role, "-database", pgtest.Database}, env, &out, &errb)
	text := out.String() + errb.String()
	if code != exitOK {
		t.Fatalf("check exited %d:\n%s", code, text)
	}
	for _, want := range []string{
		"token mode (GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure)",
		"ok    token   azure minted in",
		"ok    token   identity: object ID 11111111-aaaa-4bbb-8ccc-000000000003, upn check-mi@contoso.example, tenant tenant-e2e, through managed identity",
		fmt.Sprintf("authenticated as %q", role),
	} {
		if !strings.Contains(text, want) {
			t.Errorf("check output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, tok) {
		t.Error("check printed the token")
	}
}

// TestCheckNamesAWSPrincipal: the aws-rds provider's identity comes from
// STS GetCallerIdentity (here a local stand-in through AWS_ENDPOINT_URL_STS).
// The token cannot log in to the test cluster (only RDS checks it), so the
// auth step is left out.
func TestCheckNamesAWSPrincipal(t *testing.T) {
	c := pgtest.Require(t)
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Form.Get("Action") != "GetCallerIdentity" || !strings.Contains(r.Header.Get("Authorization"), "Credential=AKIDCHECKE2E/") {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprint(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>
<Arn>arn:aws:iam::210987654321:user/querycop</Arn><UserId>AIDAQUERYCOP</UserId><Account>210987654321</Account>
</GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>`)
	}))
	defer sts.Close()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDCHECKE2E", "AWS_SECRET_ACCESS_KEY": "check-secret-key", "AWS_SESSION_TOKEN": "",
		"AWS_ENDPOINT_URL_STS": sts.URL, "AWS_CONFIG_FILE": filepath.Join(dir, "c"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "s"),
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "", "AWS_REGION": "",
	} {
		t.Setenv(k, v)
	}
	env := []string{
		"GATEKEEPER_BACKEND_HOST=localhost",
		fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_PROVIDER=aws-rds",
		"GATEKEEPER_BACKEND_TOKEN_AWS_REGION=eu-central-1",
	}
	var out, errb bytes.Buffer
	code := runCheck(context.Background(), nil, env, &out, &errb)
	text := out.String() + errb.String()
	if code != exitOK {
		t.Fatalf("check exited %d:\n%s", code, text)
	}
	for _, want := range []string{"ok    token   aws-rds minted in", "account 210987654321, principal arn:aws:iam::210987654321:user/querycop", "access key AKIDCHECKE2E", "region eu-central-1"} {
		if !strings.Contains(text, want) {
			t.Errorf("check output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "check-secret-key") || strings.Contains(text, "X-Amz-Signature") {
		t.Errorf("check printed a secret or the token:\n%s", text)
	}
}

// TestWorkloadIdentityManifests: one manifest per cloud, each running the
// default image with the built-in provider and the cloud's service account
// binding, and no token command (which would need a CLI).
func TestWorkloadIdentityManifests(t *testing.T) {
	for file, want := range map[string][]string{
		"deploy/kubernetes/workload-identity-azure.yaml": {"azure.workload.identity/client-id:", `azure.workload.identity/use: "true"`, "value: azure\n", "serviceAccountName: querycop-azure"},
		"deploy/kubernetes/workload-identity-aws.yaml":   {"eks.amazonaws.com/role-arn:", "value: aws-rds\n", "GATEKEEPER_BACKEND_TOKEN_AWS_REGION", "serviceAccountName: querycop-aws"},
		"deploy/kubernetes/workload-identity-gcp.yaml":   {"iam.gke.io/gcp-service-account:", "value: gcp\n", "serviceAccountName: querycop-gcp"},
	} {
		doc := rdRead(t, file)
		for _, w := range append(want, "name: GATEKEEPER_BACKEND_TOKEN_PROVIDER\n", "readOnlyRootFilesystem: true") {
			if !strings.Contains(doc, w) {
				t.Errorf("%s lacks %q", file, w)
			}
		}
		if strings.Contains(doc, "GATEKEEPER_BACKEND_TOKEN_CMD") || strings.Contains(doc, "WITH_AZURE_CLI") {
			t.Errorf("%s uses the token command; the point is the provider without a CLI", file)
		}
	}
}

// rdsStandIn stands in for an RDS endpoint with IAM authentication in front
// of the test cluster: it speaks PostgreSQL's start-up and TLS, asks for the
// password in cleartext as RDS does, verifies the token as RDS would (its
// SigV4 signature with the issuing key's secret, the host:port and user it
// was signed for, its age; testkit.VerifyRDSToken), and only then logs in to
// the real cluster as that role with the role's own password and splices
// the two connections. So the login through the gateway is a real one, and
// a token the real RDS would refuse is refused.
type rdsStandIn struct {
	ln       net.Listener
	hostPort string // what tokens must be signed for
	tls      *tls.Config
	cluster  *pgtest.Cluster
	password string // the role's password on the cluster
	secretOf func(accessKey string) (string, bool)

	logins  atomic.Int32
	refused atomic.Int32
	mu      sync.Mutex
	errs    []string
}

func startRDSStandIn(t *testing.T, c *pgtest.Cluster, password string, secretOf func(string) (string, bool)) *rdsStandIn {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, err := c.CA.Issue(dir, "rds-standin", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rdsStandIn{ln: ln, hostPort: fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port),
		tls: &tls.Config{Certificates: []tls.Certificate{cert}}, cluster: c, password: password, secretOf: secretOf}
	var wg sync.WaitGroup
	conns := map[net.Conn]bool{}
	var connsMu sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns[conn] = true
			connsMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(conn)
				connsMu.Lock()
				delete(conns, conn)
				connsMu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for conn := range conns {
			conn.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *rdsStandIn) refuse(be *pgproto3.Backend, user string, why error) {
	s.refused.Add(1)
	s.mu.Lock()
	s.errs = append(s.errs, why.Error())
	s.mu.Unlock()
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28000",
		Message: fmt.Sprintf("PAM authentication failed for user %q", user)})
	_ = be.Flush()
}

func (s *rdsStandIn) serve(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if _, ok := msg.(*pgproto3.SSLRequest); err != nil || !ok {
		return // only TLS: an IAM token must never cross in plaintext
	}
	if _, err := conn.Write([]byte("S")); err != nil {
		return
	}
	tc := tls.Server(conn, s.tls)
	if err := tc.Handshake(); err != nil {
		return
	}
	be = pgproto3.NewBackend(tc, tc)
	msg, err = be.ReceiveStartupMessage()
	sm, ok := msg.(*pgproto3.StartupMessage)
	if err != nil || !ok {
		return
	}
	user, db := sm.Parameters["user"], sm.Parameters["database"]
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if be.Flush() != nil {
		return
	}
	msg, err = be.Receive()
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if err != nil || !ok {
		return
	}
	if err := testkit.VerifyRDSToken(pw.Password, s.hostPort, user, s.secretOf, time.Now()); err != nil {
		s.refuse(be, user, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=disable", s.cluster.Port, db))
	if err != nil {
		s.refuse(be, user, err)
		return
	}
	cfg.User, cfg.Password = user, s.password
	for k, v := range sm.Parameters {
		if k != "user" && k != "database" {
			cfg.RuntimeParams[k] = v
		}
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		s.refuse(be, user, err)
		return
	}
	hj, err := pc.Hijack()
	if err != nil {
		s.refuse(be, user, err)
		return
	}
	defer hj.Conn.Close()
	s.logins.Add(1)
	be.Send(&pgproto3.AuthenticationOk{})
	for k, v := range hj.ParameterStatuses {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: hj.PID, SecretKey: hj.SecretKey})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(hj.Conn, tc)
		hj.Conn.Close()
		close(done)
	}()
	_, _ = io.Copy(tc, hj.Conn)
	tc.Close()
	<-done
}

// TestProviderAWSRDSThroughStandIn: the aws-rds provider with EKS's web
// identity (a projected token file exchanged at a local STS) signs tokens
// that an RDS stand-in verifies before it logs in to the test cluster. The
// role credentials last 45s, so the provider must fetch new ones as they
// near their end, and tokens never outlive the credentials that signed them.
func TestProviderAWSRDSThroughStandIn(t *testing.T) {
	c := pgtest.Require(t)
	const role, password = "rds_app", "rds-app-cluster-password"
	createTokenRole(t, c, role, password)

	var mu sync.Mutex
	secrets := map[string]string{}
	secretOf := func(k string) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		s, ok := secrets[k]
		return s, ok
	}
	var issued atomic.Int32
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Form.Get("Action") != "AssumeRoleWithWebIdentity" || r.Form.Get("WebIdentityToken") != "eks-projected-token" {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>`)
			return
		}
		n := issued.Add(1)
		akid, secret := fmt.Sprintf("ASIASTANDIN%04d", n), fmt.Sprintf("secret-%d-for-the-stand-in", n)
		mu.Lock()
		secrets[akid] = secret
		mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>
<Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken>session-%d</SessionToken><Expiration>%s</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/querycop/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`,
			akid, secret, n, time.Now().Add(providerTTL+5*time.Second).UTC().Format(time.RFC3339))
	}))
	defer sts.Close()
	rds := startRDSStandIn(t, c, password, secretOf)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("eks-projected-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startQuerycop(t, c, providerEnv(c, "aws-rds",
		"GATEKEEPER_BACKEND_PORT="+strings.TrimPrefix(rds.hostPort, "localhost:"),
		"GATEKEEPER_BACKEND_TOKEN_AWS_REGION=eu-north-1",
		"AWS_ROLE_ARN=arn:aws:iam::123456789012:role/querycop",
		"AWS_WEB_IDENTITY_TOKEN_FILE="+tokenFile,
		"AWS_ENDPOINT_URL_STS="+sts.URL,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+filepath.Join(c.Dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(c.Dir, "no-aws-credentials"))...)

	// A token serves logins until its credentials' end less the login
	// safety: 45s-32s = 13s. Three such windows and more.
	d := 3*13*time.Second + 2*time.Second
	ok, failures := churn(t, p, role, d)
	if len(failures) > 0 {
		t.Errorf("%d of %d connections refused:\n%s", len(failures), ok+len(failures), strings.Join(failures, "\n"))
	}
	if ok < 20 || rds.logins.Load() < 3 {
		t.Errorf("%d connections, %d logins through the RDS stand-in", ok, rds.logins.Load())
	}
	if n := rds.refused.Load(); n > 0 {
		rds.mu.Lock()
		t.Errorf("the RDS stand-in refused %d tokens: %v", n, rds.errs)
		rds.mu.Unlock()
	}
	// Credentials of 45s: new ones for every usable window at least.
	if n := issued.Load(); n < 3 {
		t.Errorf("STS issued %d credentials over %s; the provider kept signing with ageing ones", n, d)
	}
	status, body := p.get(t, "/v1/token")
	var v struct {
		Provider string `json:"provider"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &v) != nil || v.Provider != "aws-rds" || strings.Contains(string(body), "X-Amz-Signature") {
		t.Errorf("/v1/token: %d %s", status, body)
	}
	if out := p.stderr.String(); strings.Contains(out, "X-Amz-Signature") || strings.Contains(out, "for-the-stand-in") {
		t.Error("the gateway logged a token or a secret key")
	}
}

// TestCheckNamesGoogleAccount: the gcp provider's identity is the service
// account the metadata server answers for, and the login is real.
func TestCheckNamesGoogleAccount(t *testing.T) {
	c := pgtest.Require(t)
	role := "querycop-check@proj-e2e.iam"
	tok := "ya29.check-token-for-querycop"
	createTokenRole(t, c, role, tok)
	var hits atomic.Int32
	srv := gceStandIn(t, tok, &hits)
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", t.TempDir()) // no gcloud application default login
	t.Setenv("CLOUDSDK_CONFIG", t.TempDir())
	env := []string{
		"GATEKEEPER_BACKEND_HOST=localhost",
		fmt.Sprintf("GATEKEEPER_BACKEND_PORT=%d", c.Port),
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE=" + c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_PROVIDER=gcp",
		// The stand-in's tokens last 40s: usable for logins with a short
		// connect timeout (the login safety is it plus 30s).
		"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=" + providerConnect,
	}
	var out, errb bytes.Buffer
	code := runCheck(context.Background(), []string{"-user", role, "-database", pgtest.Database}, env, &out, &errb)
	text := out.String() + errb.String()
	if code != exitOK {
		t.Fatalf("check exited %d:\n%s", code, text)
	}
	for _, want := range []string{"ok    token   gcp minted in", "identity: querycop@proj-e2e.iam.gserviceaccount.com (metadata server)", fmt.Sprintf("authenticated as %q", role)} {
		if !strings.Contains(text, want) {
			t.Errorf("check output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, tok) {
		t.Error("check printed the token")
	}
}
