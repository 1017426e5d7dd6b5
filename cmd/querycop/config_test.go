package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// writeTestCert writes a freshly generated self-signed CA certificate and
// its key into dir; certificates are never committed.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "querycop test"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "test.crt"), filepath.Join(dir, "test.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// osBundleOr returns the Debian/Ubuntu/Alpine OS bundle the cookbooks name
// when this machine has it, and a generated CA file otherwise.
func osBundleOr(t *testing.T) string {
	const bundle = "/etc/ssl/certs/ca-certificates.crt"
	if _, err := os.Stat(bundle); err == nil {
		return bundle
	}
	cert, _ := writeTestCert(t, t.TempDir())
	return cert
}

func problemLines(err error) []string {
	var out []string
	for _, p := range flatten(err) {
		out = append(out, p.Error())
	}
	return out
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig([]string{"GATEKEEPER_BACKEND_HOST=db.example.com", "PATH=/usr/bin"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"backend host", cfg.Backend.Host, "db.example.com"},
		{"backend port", cfg.Backend.Port, 5432},
		{"tls mode", cfg.Backend.TLSMode, backend.TLSPrefer},
		{"ca file", cfg.Backend.TLSCAFile, ""},
		{"connect timeout", cfg.Backend.ConnectTimeout, 10 * time.Second},
		{"token cmd", cfg.Backend.Token.Cmd, ""},
		{"token timeout", cfg.Backend.Token.Timeout, 30 * time.Second},
		{"listen addr", cfg.Wire.ListenAddr, "127.0.0.1"},
		{"listen port", cfg.Wire.ListenPort, 15432},
		{"login timeout", cfg.Wire.LoginTimeout, 15 * time.Second},
		{"max client conn", cfg.Wire.MaxClientConn, 1000},
		{"api addr", cfg.Admin.Addr, "127.0.0.1"},
		{"api port", cfg.Admin.Port, 8080},
		{"admin key", cfg.AdminKey.APIKey, ""},
		{"log level", cfg.Log.Level, zerolog.InfoLevel},
		{"log format", cfg.Log.Format, "json"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadConfigReadsEveryVariable(t *testing.T) {
	// Generic over Config, so a field added by any package is covered: each
	// variable set on its own to a value other than its default must change
	// the loaded Config. (Validation may still refuse the value; the loaded
	// Config is returned either way.)
	const host = "GATEKEEPER_BACKEND_HOST=db.example.com"
	base, err := LoadConfig([]string{host})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sections(&Config{}) {
		for _, l := range s.leaves {
			val := sampleValue(t, l)
			// First entry wins, so the sample overrides host when l is host.
			cfg, _ := LoadConfig([]string{l.key + "=" + val, host})
			if reflect.DeepEqual(cfg, base) {
				t.Errorf("%s=%s left the Config unchanged", l.key, val)
			}
		}
	}

	// And the mapping of a few by hand, where a mix-up would be costly.
	cfg, err := LoadConfig([]string{host, "GATEKEEPER_BACKEND_PORT=6432", "GATEKEEPER_API_PORT=9090", "GATEKEEPER_LISTEN_PORT=6543",
		"GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_CMD=echo tok", "ADMIN_API_KEY=k", "GATEKEEPER_LOG_LEVEL=debug"})
	if err != nil {
		t.Fatal(err)
	}
	got := []any{cfg.Backend.Port, cfg.Admin.Port, cfg.Wire.ListenPort, cfg.Backend.TLSMode, cfg.Backend.Token.Cmd, cfg.AdminKey.APIKey, cfg.Log.Level}
	want := []any{6432, 9090, 6543, backend.TLSRequire, "echo tok", "k", zerolog.DebugLevel}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

// sampleValue returns a value for l that parses and differs from its default.
func sampleValue(t *testing.T, l leaf) string {
	t.Helper()
	typ := l.typ
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	pick := func(candidates ...string) string {
		for _, c := range candidates {
			if c != l.def {
				return c
			}
		}
		return ""
	}
	if reflect.PointerTo(typ).Implements(unmarshaler) {
		for _, c := range []string{"require", "debug", "warn", "verify-full", "transaction", "refuse"} {
			if c != l.def && reflect.New(typ).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(c)) == nil {
				return c
			}
		}
		t.Fatalf("%s: no sample value for %v", l.key, typ)
	}
	switch {
	case typ == durationType:
		return pick("7s", "8s")
	case typ.Kind() == reflect.Bool:
		return pick("false", "true")
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		return pick("7", "8")
	case typ.Kind() == reflect.String:
		return pick("sample-value", "other-value")
	case typ.Kind() == reflect.Slice && typ.Elem().Kind() == reflect.String:
		return pick("alice,bob", "carol")
	}
	t.Fatalf("%s: no sample value for %v", l.key, typ)
	return ""
}

func TestLoadConfigProblems(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeTestCert(t, dir)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const host = "GATEKEEPER_BACKEND_HOST=db.example.com"

	for _, tc := range []struct {
		name string
		env  []string
		want []string // one substring per expected problem, in order
	}{
		{"host/missing", nil, []string{"GATEKEEPER_BACKEND_HOST is not set; set it to the host name"}},
		{"host/empty", []string{"GATEKEEPER_BACKEND_HOST="}, []string{"GATEKEEPER_BACKEND_HOST is not set"}},
		{"backend-port/not-a-number", []string{host, "GATEKEEPER_BACKEND_PORT=abc"},
			[]string{`GATEKEEPER_BACKEND_PORT="abc": not a whole number`}},
		{"backend-port/huge", []string{host, "GATEKEEPER_BACKEND_PORT=99999999999"},
			[]string{`GATEKEEPER_BACKEND_PORT="99999999999": number out of range`}},
		{"backend-port/out-of-range", []string{host, "GATEKEEPER_BACKEND_PORT=70000"},
			[]string{"GATEKEEPER_BACKEND_PORT=70000 is not a TCP port; use 1 to 65535"}},
		{"listen-port/zero", []string{host, "GATEKEEPER_LISTEN_PORT=0"}, []string{"GATEKEEPER_LISTEN_PORT=0 is not a TCP port"}},
		{"api-port/negative", []string{host, "GATEKEEPER_API_PORT=-1"}, []string{"GATEKEEPER_API_PORT=-1 is not a TCP port"}},
		{"tls-mode/unknown", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=sometimes"},
			[]string{`GATEKEEPER_BACKEND_TLS_MODE="sometimes": unknown TLS mode "sometimes" (want one of disable, allow, prefer, require, verify-ca, verify-full)`}},
		{"verify-full/no-ca-file", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=verify-full"},
			[]string{"GATEKEEPER_BACKEND_TLS_MODE=verify-full needs GATEKEEPER_BACKEND_TLS_CA_FILE: the implicit system certificate pool is deliberately not supported; " +
				"for a server with a publicly-trusted certificate point it at the OS bundle, e.g. /etc/ssl/certs/ca-certificates.crt"}},
		{"verify-ca/no-ca-file", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=verify-ca"},
			[]string{"GATEKEEPER_BACKEND_TLS_MODE=verify-ca needs GATEKEEPER_BACKEND_TLS_CA_FILE"}},
		{"ca-file/garbage", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=verify-full", "GATEKEEPER_BACKEND_TLS_CA_FILE=" + garbage},
			[]string{"GATEKEEPER_BACKEND_TLS_CA_FILE is unusable: CA file " + garbage + " holds no -----BEGIN CERTIFICATE----- block"}},
		{"ca-file/missing-in-prefer-mode", []string{host, "GATEKEEPER_BACKEND_TLS_CA_FILE=" + filepath.Join(dir, "nope.pem")},
			[]string{"GATEKEEPER_BACKEND_TLS_CA_FILE is unusable: reading CA file: open " + filepath.Join(dir, "nope.pem") + ": no such file or directory"}},
		{"token/prefer", []string{host, "GATEKEEPER_BACKEND_TOKEN_CMD=az account get-access-token"},
			[]string{"GATEKEEPER_BACKEND_TOKEN_CMD is set but GATEKEEPER_BACKEND_TLS_MODE=prefer, which can fall back to plaintext and would leak the token; " +
				"set GATEKEEPER_BACKEND_TLS_MODE to verify-full (or verify-ca or require)"}},
		{"token/allow", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=allow", "GATEKEEPER_BACKEND_TOKEN_CMD=x"},
			[]string{"GATEKEEPER_BACKEND_TLS_MODE=allow, which can fall back to plaintext"}},
		{"token/disable", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=disable", "GATEKEEPER_BACKEND_TOKEN_CMD=x"},
			[]string{"GATEKEEPER_BACKEND_TLS_MODE=disable, which sends the token in plaintext"}},
		{"proxy-tls/cert-only", []string{host, "GATEKEEPER_PROXY_TLS_CERT=" + cert},
			[]string{"GATEKEEPER_PROXY_TLS_CERT is set but GATEKEEPER_PROXY_TLS_KEY is not"}},
		{"proxy-tls/key-only", []string{host, "GATEKEEPER_PROXY_TLS_KEY=" + key},
			[]string{"GATEKEEPER_PROXY_TLS_KEY is set but GATEKEEPER_PROXY_TLS_CERT is not"}},
		{"proxy-tls/bad-pair", []string{host, "GATEKEEPER_PROXY_TLS_CERT=" + cert, "GATEKEEPER_PROXY_TLS_KEY=" + garbage},
			[]string{"GATEKEEPER_PROXY_TLS_CERT and GATEKEEPER_PROXY_TLS_KEY do not load as a certificate and key pair: tls:"}},
		{"admin-users/token-mode-without-auth-file", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_CMD=x", "GATEKEEPER_ADMIN_USERS=ops"},
			[]string{"GATEKEEPER_ADMIN_USERS is set in token mode without GATEKEEPER_CLIENT_AUTH_FILE or GATEKEEPER_AUTH_USER: token mode does not check client passwords, so anyone could open the admin console"}},
		{"admin-users/empty-name", []string{host, "GATEKEEPER_ADMIN_USERS=ops,,ci"},
			[]string{`GATEKEEPER_ADMIN_USERS="ops,,ci" has an empty user name`}},
		{"connect-timeout/zero", []string{host, "GATEKEEPER_BACKEND_CONNECT_TIMEOUT=0s"},
			[]string{"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=0s must be positive"}},
		{"token-timeout/bare-number", []string{host, "GATEKEEPER_BACKEND_TOKEN_TIMEOUT=60"},
			[]string{`GATEKEEPER_BACKEND_TOKEN_TIMEOUT="60": not a duration; write a number with a unit`}},
		{"token-timeout/negative", []string{host, "GATEKEEPER_BACKEND_TOKEN_TIMEOUT=-5s"},
			[]string{"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=-5s must be positive"}},
		{"login-timeout/zero", []string{host, "GATEKEEPER_CLIENT_LOGIN_TIMEOUT=0"},
			[]string{"GATEKEEPER_CLIENT_LOGIN_TIMEOUT=0s must be positive"}},
		{"log-format/unknown", []string{host, "GATEKEEPER_LOG_FORMAT=xml"},
			[]string{`GATEKEEPER_LOG_FORMAT="xml": not a log format; use json`}},
		{"log-level/unknown", []string{host, "GATEKEEPER_LOG_LEVEL=loud"},
			[]string{`GATEKEEPER_LOG_LEVEL="loud": not a log level; use trace, debug, info, warn or error`}},
		{"log-level/hides-warnings", []string{host, "GATEKEEPER_LOG_LEVEL=disabled"},
			[]string{`GATEKEEPER_LOG_LEVEL="disabled": not a log level`}},
		{"ports/clash", []string{host, "GATEKEEPER_API_PORT=15432", "GATEKEEPER_API_ADDR=0.0.0.0"},
			[]string{"GATEKEEPER_LISTEN_PORT and GATEKEEPER_API_PORT are both 15432"}},
		{"all-at-once", []string{
			"GATEKEEPER_BACKEND_PORT=abc",
			"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
			"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=0s",
			"GATEKEEPER_LISTEN_PORT=65536",
			"GATEKEEPER_PROXY_TLS_KEY=" + key,
			"GATEKEEPER_API_PORT=x",
			"GATEKEEPER_LOG_FORMAT=text",
		}, []string{
			"GATEKEEPER_BACKEND_PORT=\"abc\"",
			"GATEKEEPER_API_PORT=\"x\"",
			"GATEKEEPER_BACKEND_HOST is not set",
			"needs GATEKEEPER_BACKEND_TLS_CA_FILE",
			"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=0s",
			"GATEKEEPER_LISTEN_PORT=65536",
			"GATEKEEPER_PROXY_TLS_KEY is set but",
			"GATEKEEPER_LOG_FORMAT=\"text\"",
		}},
		{"auth-user/no-password", []string{host, "GATEKEEPER_AUTH_USER=qc_auth"},
			[]string{`GATEKEEPER_AUTH_USER="qc_auth" needs a password to log in and run the auth query: set GATEKEEPER_AUTH_PASSWORD`}},
		{"auth-user/plain-entry-of-another-user", []string{host, "GATEKEEPER_AUTH_USER=qc_auth", "GATEKEEPER_CLIENT_AUTH_FILE=" + userlist(t, `"someone" "pw"`)},
			[]string{`GATEKEEPER_AUTH_USER="qc_auth" needs a password`}},
		{"auth-query/no-parameter", []string{host, "GATEKEEPER_AUTH_USER=qc_auth", "GATEKEEPER_AUTH_PASSWORD=pw", "GATEKEEPER_AUTH_QUERY=select 1"},
			[]string{`GATEKEEPER_AUTH_QUERY="select 1" does not use $1`}},
		{"auth-query/negative-ttl", []string{host, "GATEKEEPER_AUTH_QUERY_CACHE_TTL=-1s"},
			[]string{"GATEKEEPER_AUTH_QUERY_CACHE_TTL=-1s must not be negative"}},
		{"auth-file/md5-in-pass-through", []string{host, "GATEKEEPER_CLIENT_AUTH_FILE=" + userlist(t, `"bob" "md5a3556571e93b0d20722ba62be61e8c2d"`)},
			[]string{"GATEKEEPER_CLIENT_AUTH_FILE has MD5 entries for bob"}},
		{"unparsed-variable-is-reported-once", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=strict", "GATEKEEPER_BACKEND_TOKEN_CMD=x"},
			[]string{`GATEKEEPER_BACKEND_TLS_MODE="strict": unknown TLS mode`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(tc.env)
			if err == nil {
				t.Fatalf("LoadConfig = nil error, want %q", tc.want)
			}
			got := problemLines(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], w)
				}
				if !strings.Contains(got[i], "GATEKEEPER_") {
					t.Errorf("problem %d = %q names no variable", i, got[i])
				}
			}
		})
	}
}

func TestLoadConfigAccepts(t *testing.T) {
	caFile := osBundleOr(t)
	const host = "GATEKEEPER_BACKEND_HOST=myserver.postgres.database.azure.com"
	for _, tc := range []struct {
		name string
		env  []string
	}{
		// The Azure cookbook's Pattern B, as written there.
		{"cookbook/pattern-b", []string{
			host,
			"GATEKEEPER_BACKEND_PORT=5432",
			"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
			"GATEKEEPER_BACKEND_TLS_CA_FILE=" + caFile,
			"GATEKEEPER_BACKEND_TOKEN_CMD=az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv",
			"GATEKEEPER_LISTEN_PORT=15432",
			"GATEKEEPER_API_PORT=8080",
			"ADMIN_API_KEY=0123456789abcdef0123456789abcdef",
		}},
		{"cookbook/pattern-a", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=verify-full", "GATEKEEPER_BACKEND_TLS_CA_FILE=" + caFile}},
		{"token/require", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_CMD=echo tok"}},
		{"token/verify-ca", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=verify-ca", "GATEKEEPER_BACKEND_TLS_CA_FILE=" + caFile, "GATEKEEPER_BACKEND_TOKEN_CMD=echo tok"}},
		{"require/with-ca-file", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TLS_CA_FILE=" + caFile}},
		{"log/upper-case-level", []string{host, "GATEKEEPER_LOG_LEVEL=WARN"}},
		{"ports/same-port-different-addr", []string{host, "GATEKEEPER_LISTEN_ADDR=10.0.0.1", "GATEKEEPER_API_ADDR=127.0.0.1", "GATEKEEPER_API_PORT=15432"}},
		{"empty-means-default", []string{host, "GATEKEEPER_BACKEND_PORT=", "GATEKEEPER_BACKEND_TLS_MODE="}},
		{"auth-user/password", []string{host, "GATEKEEPER_AUTH_USER=qc_auth", "GATEKEEPER_AUTH_PASSWORD=pw"}},
		{"auth-user/plain-entry", []string{host, "GATEKEEPER_AUTH_USER=qc_auth", "GATEKEEPER_CLIENT_AUTH_FILE=" + userlist(t, `"qc_auth" "pw"`)}},
		{"auth-user/token-mode", []string{host, "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_CMD=echo tok", "GATEKEEPER_AUTH_USER=qc_auth"}},
		// SCRAM end to end: the server's own secret logs in in pass-through mode.
		{"auth-file/scram-in-pass-through", []string{host, "GATEKEEPER_CLIENT_AUTH_FILE=" + userlist(t,
			`"alice" "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$WsP8b3mCi/0S0kzLcuRDSvNfVWpvwN3J6pjLkW4pxhM=:qMs4PZp8y2E0l3YEDjGJf0g9xxn0gZWX4WRH3Ik7ZeA="`)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadConfig(tc.env); err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
		})
	}
}

func TestLoadConfigNeverEchoesSecrets(t *testing.T) {
	const key = "s3cret-admin-key-5f1d"
	const cmd = "get-token --client-secret hunter2-xyz"
	_, err := LoadConfig([]string{
		"ADMIN_API_KEY=" + key,
		"GATEKEEPER_BACKEND_TOKEN_CMD=" + cmd, // refused: prefer mode
		"GATEKEEPER_BACKEND_PORT=abc",
		"GATEKEEPER_LOG_FORMAT=" + key, // even pasted into the wrong variable it is only that variable's value
	})
	if err == nil {
		t.Fatal("want problems")
	}
	text := strings.ReplaceAll(err.Error(), `GATEKEEPER_LOG_FORMAT="`+key+`"`, "")
	for _, secret := range []string{key, "hunter2"} {
		if strings.Contains(text, secret) {
			t.Errorf("error text contains %q:\n%s", secret, err)
		}
	}

	var out, errb bytes.Buffer
	if code := run(nil, []string{"ADMIN_API_KEY=" + key, "GATEKEEPER_BACKEND_TOKEN_CMD=" + cmd}, &out, &errb); code != exitBadConfig {
		t.Fatalf("run = %d, want %d", code, exitBadConfig)
	}
	for _, secret := range []string{key, "hunter2"} {
		if strings.Contains(out.String()+errb.String(), secret) {
			t.Errorf("run output contains %q:\n%s", secret, errb.String())
		}
	}
}

func TestDescribeParseErrorOfSecret(t *testing.T) {
	// No secret field can fail to parse today (both are strings); make sure
	// the day one can, its value stays out.
	s := section{leaves: []leaf{{field: "APIKey", key: "ADMIN_API_KEY", typ: reflect.TypeFor[int]()}}}
	key, msg := describeEnvError(env.ParseError{Name: "APIKey", Err: os.ErrInvalid}, s, map[string]string{"ADMIN_API_KEY": "topsecret"})
	if key != "ADMIN_API_KEY" || strings.Contains(msg, "topsecret") || !strings.Contains(msg, "ADMIN_API_KEY (value not shown)") {
		t.Errorf("got %q, %q", key, msg)
	}
}

func TestFieldNamesUniquePerSection(t *testing.T) {
	// env.ParseError names only the Go field; LoadConfig finds the variable
	// by that name within a section, which needs the names to be unique.
	for _, s := range sections(&Config{}) {
		seen := map[string]bool{}
		for _, l := range s.leaves {
			if seen[l.field] {
				t.Errorf("field name %s appears twice under prefix %q", l.field, s.prefix)
			}
			seen[l.field] = true
		}
	}
}

func TestLeavesMatchEnvLibrary(t *testing.T) {
	// Our walk (for --help, docs and error keys) must see exactly the keys
	// caarlos0/env reads.
	for _, s := range sections(&Config{}) {
		params, err := env.GetFieldParamsWithOptions(s.ptr, env.Options{Prefix: s.prefix})
		if err != nil {
			t.Fatal(err)
		}
		var lib, ours []string
		for _, p := range params {
			lib = append(lib, p.Key+"="+p.DefaultValue)
		}
		for _, l := range s.leaves {
			ours = append(ours, l.key+"="+l.def)
		}
		if !reflect.DeepEqual(lib, ours) {
			t.Errorf("prefix %q: env reads %v, our walk lists %v", s.prefix, lib, ours)
		}
	}
}

func TestEveryVariableHasHelp(t *testing.T) {
	for _, v := range envVars() {
		if strings.TrimSpace(v.Help) == "" {
			t.Errorf("%s has no help tag", v.Name)
		}
		if v.Name != "ADMIN_API_KEY" && !strings.HasPrefix(v.Name, envPrefix) {
			t.Errorf("%s lacks the %s prefix", v.Name, envPrefix)
		}
	}
}

func TestRequiredVarsAreRefusedWhenEmpty(t *testing.T) {
	for name := range requiredVars {
		_, err := LoadConfig([]string{name + "="})
		if err == nil || !strings.Contains(err.Error(), name+" is not set") {
			t.Errorf("%s empty: err = %v", name, err)
		}
	}
}

func TestUnknownVars(t *testing.T) {
	got := unknownVars([]string{
		"GATEKEEPER_BACKEND_TLSMODE=verify-full",
		"GATEKEEPER_SOMETHING_ELSE_ENTIRELY=1",
		"GATEKEEPER_BACKEND_HOST=x",
		"HOME=/root",
	})
	want := []unknownVar{
		{Name: "GATEKEEPER_BACKEND_TLSMODE", Suggestion: "GATEKEEPER_BACKEND_TLS_MODE"},
		{Name: "GATEKEEPER_SOMETHING_ELSE_ENTIRELY"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("unknownVars = %+v, want %+v", got, want)
	}
}

func TestNewLogger(t *testing.T) {
	t.Run("json", func(t *testing.T) {
		var buf bytes.Buffer
		log := newLogger(LogConfig{Level: zerolog.InfoLevel, Format: "json"}, &buf)
		log.Debug().Msg("hidden")
		log.Info().Msg("shown")
		var line map[string]any
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("want one JSON line, got %q: %v", buf.String(), err)
		}
		if line["service"] != "querycop" || line["message"] != "shown" || line["level"] != "info" || line["time"] == nil {
			t.Errorf("line = %v", line)
		}
		if zerolog.GlobalLevel() != zerolog.TraceLevel {
			t.Errorf("newLogger changed the global level to %v", zerolog.GlobalLevel())
		}
	})
	t.Run("trace", func(t *testing.T) {
		var buf bytes.Buffer
		log := newLogger(LogConfig{Level: zerolog.TraceLevel, Format: "json"}, &buf)
		log.Trace().Msg("shown")
		if !strings.Contains(buf.String(), `"level":"trace"`) {
			t.Errorf("trace line missing: %q", buf.String())
		}
	})
	t.Run("console", func(t *testing.T) {
		var buf bytes.Buffer
		log := newLogger(LogConfig{Level: zerolog.WarnLevel, Format: "console"}, &buf)
		log.Info().Msg("hidden")
		log.Warn().Msg("shown")
		if s := buf.String(); !strings.Contains(s, "shown") || strings.Contains(s, "hidden") || strings.HasPrefix(s, "{") {
			t.Errorf("console output = %q", s)
		}
	})
}

func TestRunHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h", "help"} {
		t.Run(arg, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run([]string{arg}, nil, &out, &errb); code != exitOK {
				t.Fatalf("exit %d, stderr %q", code, errb.String())
			}
			lines := strings.Split(out.String(), "\n")
			for _, v := range envVars() {
				i := slicesIndexPrefix(lines, "  "+v.Name+" ")
				if i < 0 {
					t.Errorf("--help lacks %s", v.Name)
					continue
				}
				def := v.Default
				if v.Required {
					def = "(required)"
				} else if def == "" {
					def = "(none)"
				}
				// Columns are separated by at least two spaces; defaults may hold one.
				if !strings.Contains(lines[i], v.Name+"  ") || !strings.Contains(lines[i], "  "+def+"  ") || !strings.HasSuffix(lines[i], "  "+v.Help) {
					t.Errorf("--help line %q, want default %q and help %q", lines[i], def, v.Help)
				}
			}
		})
	}
}

func slicesIndexPrefix(lines []string, prefix string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}

func TestRunVersion(t *testing.T) {
	old := version
	version = "1.2.3"
	t.Cleanup(func() { version = old })
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, nil, &out, &errb); code != exitOK || out.String() != "querycop 1.2.3\n" {
		t.Errorf("exit %d, stdout %q", code, out.String())
	}
}

func TestRunInvalidConfiguration(t *testing.T) {
	var out, errb bytes.Buffer
	env := []string{"GATEKEEPER_BACKEND_PORT=abc", "GATEKEEPER_LOG_FORMAT=xml", "GATEKEEPER_BACKEND_TLS_MODE=verify-ca"}
	if code := run(nil, env, &out, &errb); code != exitBadConfig {
		t.Fatalf("exit %d, want %d", code, exitBadConfig)
	}
	want := "querycop: invalid configuration:\n" +
		"  - GATEKEEPER_BACKEND_PORT=\"abc\": not a whole number\n" +
		"  - GATEKEEPER_BACKEND_HOST is not set; set it to the host name or address of the PostgreSQL server\n" +
		"  - GATEKEEPER_BACKEND_TLS_MODE=verify-ca needs GATEKEEPER_BACKEND_TLS_CA_FILE: the implicit system certificate pool is deliberately not supported; " +
		"for a server with a publicly-trusted certificate point it at the OS bundle, e.g. /etc/ssl/certs/ca-certificates.crt\n" +
		"  - GATEKEEPER_LOG_FORMAT=\"xml\": not a log format; use json (for collectors) or console (for people)\n"
	if errb.String() != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errb.String(), want)
	}
	if out.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", out.String())
	}
}

func TestRunCheckConfiguration(t *testing.T) {
	var out, errb bytes.Buffer
	// Port 1 on loopback refuses at once, so the dial step fails fast.
	code := run([]string{"check"}, []string{"GATEKEEPER_BACKEND_HOST=127.0.0.1", "GATEKEEPER_BACKEND_PORT=1",
		"GATEKEEPER_BACKEND_TLS_MODE=disable", "GATEKEEPER_BACKEND_TLSMODE=require"}, &out, &errb)
	if code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	for _, want := range []string{
		"warn  config  ignoring unknown variable GATEKEEPER_BACKEND_TLSMODE (did you mean GATEKEEPER_BACKEND_TLS_MODE?)",
		"ok    config  backend 127.0.0.1:1, TLS mode disable, pass-through mode",
		"fail  dial    backend dial failed: ",
		"skip  auth    an earlier step failed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"check"}, nil, &out, &errb); code != exitBadConfig || !strings.Contains(out.String(), "fail  config  GATEKEEPER_BACKEND_HOST is not set") {
		t.Errorf("exit %d, stdout %q", code, out.String())
	}
}

func TestRunUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve-please"}, "querycop: unknown command \"serve-please\"; run \"querycop help\" for the commands and variables\n"},
		{[]string{"version", "extra"}, "querycop: unexpected argument \"extra\"; run \"querycop help\" for usage\n"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, nil, &out, &errb); code != exitBadConfig {
			t.Errorf("%v: exit %d, want %d", tc.args, code, exitBadConfig)
		}
		// One line and a hint, not the whole help.
		if errb.String() != tc.want || out.Len() != 0 {
			t.Errorf("%v: stdout %q stderr %q, want stderr %q only", tc.args, out.String(), errb.String(), tc.want)
		}
	}
}

func TestVersionFromBuildInfo(t *testing.T) {
	settings := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i+1 < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	bi := func(v string, s []debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Path: "github.com/querycop/querycop", Version: v}, Settings: s}
	}
	rev := "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name, stamped string
		bi            *debug.BuildInfo
		want          string
	}{
		{"stamped wins", "1.2.3", bi("v0.9.0", nil), "1.2.3"},
		{"go install at a tag", "", bi("v1.4.0", nil), "v1.4.0"},
		{"pseudo-version of a commit", "", bi("v0.0.0-20261206040000-0123456789ab+dirty", nil), "v0.0.0-20261206040000-0123456789ab+dirty"},
		{"revision only", "", bi("(devel)", settings("vcs.revision", rev, "vcs.modified", "false")), "0123456789ab"},
		{"modified revision", "", bi("(devel)", settings("vcs.revision", rev, "vcs.modified", "true")), "0123456789ab-dirty"},
		{"no VCS", "", bi("(devel)", nil), "dev"},
		{"no build info", "", nil, "dev"},
	} {
		if got := versionFrom(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: versionFrom = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A plain `go build` in a checkout (no -ldflags) reports the commit it was
// built from, not "dev".
func TestPlainBuildReportsRevision(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("git rev-parse HEAD: %v", err)
		}
		t.Skipf("not in a git checkout: %v", err)
	}
	rev := strings.TrimSpace(string(head))
	// Go stamps VCS information only where .git is a directory: a clone
	// (as in CI), not a `git worktree` checkout, where .git is a file; there
	// the test builds a local clone of the same commit.
	dir := "."
	if fi, err := os.Stat("../../.git"); err != nil || !fi.IsDir() {
		clone := filepath.Join(t.TempDir(), "clone")
		for _, args := range [][]string{{"clone", "-q", "--shared", "--no-checkout", "../..", clone}, {"-C", clone, "checkout", "-q", rev}} {
			if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
				t.Fatalf("git %v: %v\n%s", args, err, out)
			}
		}
		dir = filepath.Join(clone, "cmd", "querycop")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "querycop")
	build := exec.Command(goCmd, "build", "-o", bin, ".")
	build.Dir = dir
	// Go's default; a machine's go env file may turn VCS stamping off
	// (GOFLAGS=-buildvcs=false), and the environment overrides it.
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=auto")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("querycop version: %v", err)
	}
	got := strings.TrimSpace(string(out))
	if got == "querycop dev" || !strings.Contains(got, rev[:12]) {
		t.Errorf("querycop version = %q, want the revision %.12s in it", got, head)
	}
}

func TestRunServeErrorExitsOne(t *testing.T) {
	// serve fails before listening: the CA file vanished after validation
	// would be racy to arrange, so use an address that cannot be bound.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := runContext(ctx, nil, []string{"GATEKEEPER_BACKEND_HOST=127.0.0.1", "GATEKEEPER_LISTEN_ADDR=192.0.2.1", "GATEKEEPER_LISTEN_PORT=1"}, &out, &errb)
	if code != exitFailed {
		t.Fatalf("exit %d, want %d; stderr %s", code, exitFailed, errb.String())
	}
	if !strings.Contains(errb.String(), `"message":"querycop failed"`) {
		t.Errorf("stderr = %s", errb.String())
	}
}

// userlist writes a client auth file with the given lines.
func userlist(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The auth query role's password is a secret like the admin key: /v1/config
// says only whether it is set.
func TestEffectiveConfigHidesAuthPassword(t *testing.T) {
	cfg, err := LoadConfig([]string{"GATEKEEPER_BACKEND_HOST=db", "GATEKEEPER_AUTH_USER=qc_auth", "GATEKEEPER_AUTH_PASSWORD=hunter2-auth"})
	if err != nil {
		t.Fatal(err)
	}
	eff := effectiveConfig(cfg)
	if got := eff["GATEKEEPER_AUTH_PASSWORD"]; got != "(set, not shown)" {
		t.Errorf("GATEKEEPER_AUTH_PASSWORD in /v1/config = %q", got)
	}
	if eff["GATEKEEPER_AUTH_USER"] != "qc_auth" {
		t.Errorf("GATEKEEPER_AUTH_USER in /v1/config = %q", eff["GATEKEEPER_AUTH_USER"])
	}
}
