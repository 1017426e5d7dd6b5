package backend

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/querycop/querycop/token"
)

// validateTestCA returns a freshly generated self-signed CA certificate,
// as PEM and parsed. Certificates are never committed (testdata rule).
func validateTestCA(t *testing.T, cn string) ([]byte, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
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
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert
}

func writeValidateTestFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadCAFile(t *testing.T) {
	pemA, certA := validateTestCA(t, "ca a")
	pemB, certB := validateTestCA(t, "ca b")
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER at all")})
	damaged := []byte("-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n")
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("ignored")})

	t.Run("bundle/trusts-every-certificate", func(t *testing.T) {
		// Comments and other block types between certificates are normal
		// in OS bundles and must not matter.
		data := append(append(append([]byte("# a comment\n"), pemA...), key...), pemB...)
		pool, err := LoadCAFile(writeValidateTestFile(t, "bundle.pem", data))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []*x509.Certificate{certA, certB} {
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
				t.Errorf("%s not trusted: %v", c.Subject.CommonName, err)
			}
		}
	})

	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte("this is not a certificate\n"), "holds no -----BEGIN CERTIFICATE----- block"},
		{"empty", nil, "holds no -----BEGIN CERTIFICATE----- block"},
		{"only-a-key", key, "holds no -----BEGIN CERTIFICATE----- block"},
		{"damaged-base64", append(append([]byte{}, pemA...), damaged...), "1 of 2 certificate blocks are not valid PEM"},
		{"unparsable-der", append(append([]byte{}, pemA...), badDER...), "certificate 2 does not parse"},
	} {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			path := writeValidateTestFile(t, "ca.pem", tc.data)
			_, err := LoadCAFile(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want it to name %s and contain %q", err, path, tc.want)
			}
		})
	}

	t.Run("refused/missing", func(t *testing.T) {
		_, err := LoadCAFile(filepath.Join(t.TempDir(), "nope.pem"))
		if err == nil || !strings.Contains(err.Error(), "reading CA file") || !os.IsNotExist(unwrapAll(err)) {
			t.Fatalf("err = %v, want a not-exist reading error", err)
		}
	})
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}

func TestConfigValidate(t *testing.T) {
	caPEM, _ := validateTestCA(t, "backend ca")
	caFile := writeValidateTestFile(t, "ca.pem", caPEM)
	garbage := writeValidateTestFile(t, "garbage.pem", []byte("hello"))

	// The defaults, as the environment gives them, so fields added later
	// (here or in token.Config) start valid.
	good := func() Config {
		var c Config
		if err := env.ParseWithOptions(&c, env.Options{Environment: map[string]string{"HOST": "db.example.com"}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		adjust func(*Config)
		want   []string // substrings of distinct problems; none means valid
	}{
		{"ok/defaults", func(c *Config) {}, nil},
		{"ok/verify-full-with-ca", func(c *Config) { c.TLSMode, c.TLSCAFile = TLSVerifyFull, caFile }, nil},
		{"ok/token-with-require", func(c *Config) { c.TLSMode, c.Token.Cmd = TLSRequire, "echo t" }, nil},
		{"ok/token-with-verify-ca", func(c *Config) { c.TLSMode, c.TLSCAFile, c.Token.Cmd = TLSVerifyCA, caFile, "echo t" }, nil},
		{"ok/ca-file-with-prefer", func(c *Config) { c.TLSCAFile = caFile }, nil},
		{"host/empty", func(c *Config) { c.Host = "" }, []string{"GATEKEEPER_BACKEND_HOST is not set"}},
		{"host/blank", func(c *Config) { c.Host = "  " }, []string{"GATEKEEPER_BACKEND_HOST is not set"}},
		{"port/zero", func(c *Config) { c.Port = 0 }, []string{"GATEKEEPER_BACKEND_PORT=0 is not a TCP port; use 1 to 65535"}},
		{"port/too-big", func(c *Config) { c.Port = 65536 }, []string{"GATEKEEPER_BACKEND_PORT=65536 is not a TCP port"}},
		{"connect-timeout/zero", func(c *Config) { c.ConnectTimeout = 0 }, []string{"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=0s must be positive"}},
		{"token-timeout/negative", func(c *Config) { c.Token.Timeout = -time.Second }, []string{"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=-1s must be positive"}},
		{"token-cmd/blank", func(c *Config) { c.TLSMode, c.Token.Cmd = TLSRequire, " \n" }, []string{"GATEKEEPER_BACKEND_TOKEN_CMD is blank"}},
		{"verify-ca/no-ca-file", func(c *Config) { c.TLSMode = TLSVerifyCA },
			[]string{"GATEKEEPER_BACKEND_TLS_MODE=verify-ca needs GATEKEEPER_BACKEND_TLS_CA_FILE: the implicit system certificate pool is deliberately not supported"}},
		{"verify-full/no-ca-file", func(c *Config) { c.TLSMode = TLSVerifyFull }, []string{"/etc/ssl/certs/ca-certificates.crt"}},
		{"ca-file/garbage", func(c *Config) { c.TLSMode, c.TLSCAFile = TLSVerifyFull, garbage },
			[]string{"GATEKEEPER_BACKEND_TLS_CA_FILE is unusable: CA file " + garbage + " holds no -----BEGIN CERTIFICATE----- block"}},
		{"ca-file/garbage-in-disable-mode", func(c *Config) { c.TLSMode, c.TLSCAFile = TLSDisable, garbage },
			[]string{"GATEKEEPER_BACKEND_TLS_CA_FILE is unusable"}},
		{"token/prefer", func(c *Config) { c.Token.Cmd = "echo t" },
			[]string{"GATEKEEPER_BACKEND_TOKEN_CMD is set but GATEKEEPER_BACKEND_TLS_MODE=prefer, which can fall back to plaintext and would leak the token"}},
		{"token/allow", func(c *Config) { c.TLSMode, c.Token.Cmd = TLSAllow, "echo t" }, []string{"TLS_MODE=allow, which can fall back to plaintext"}},
		{"token/disable", func(c *Config) { c.TLSMode, c.Token.Cmd = TLSDisable, "echo t" }, []string{"TLS_MODE=disable, which sends the token in plaintext"}},
		// A token is not used in its last ConnectTimeout+30s: an opaque
		// token assumed to live no longer would be refused to every client.
		{"token-lifetime/within-login-safety", func(c *Config) {
			c.TLSMode, c.Token.Cmd, c.Token.Lifetime, c.Token.RefreshMargin = TLSRequire, "echo t", 40*time.Second, 10*time.Second
		}, []string{"GATEKEEPER_BACKEND_TOKEN_LIFETIME=40s is too short: a token is not used for a new backend login in its last 40s (GATEKEEPER_BACKEND_CONNECT_TIMEOUT plus 30s)"}},
		{"ok/token-lifetime-above-login-safety", func(c *Config) {
			c.TLSMode, c.Token.Cmd, c.ConnectTimeout = TLSRequire, "echo t", time.Second
			c.Token.Lifetime, c.Token.RefreshMargin = 32*time.Second, 10*time.Second
		}, nil},
		{"ok/token-lifetime-unused-by-provider", func(c *Config) {
			c.TLSMode, c.Token.Provider, c.Token.Lifetime, c.Token.RefreshMargin = TLSRequire, "gcp", 40*time.Second, 10*time.Second
		}, nil},
		{"all-at-once", func(c *Config) {
			tok := c.Token
			tok.Cmd, tok.Timeout = "echo t", 0
			*c = Config{TLSMode: TLSVerifyFull, Token: tok}
		}, []string{"BACKEND_HOST is not set", "BACKEND_PORT=0", "CONNECT_TIMEOUT=0s", "needs GATEKEEPER_BACKEND_TLS_CA_FILE", "TOKEN_TIMEOUT=0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.adjust(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			probs := err.(interface{ Unwrap() []error }).Unwrap()
			if len(probs) != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(probs), len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("problems lack %q:\n%v", w, err)
				}
			}
			if c.Token.Cmd != "" && strings.TrimSpace(c.Token.Cmd) != "" && strings.Contains(err.Error(), c.Token.Cmd) {
				t.Errorf("problems echo the token command:\n%v", err)
			}
		})
	}
}

func TestProblemsNameTheirVariables(t *testing.T) {
	err := Config{TLSMode: TLSPrefer, Token: token.Config{Cmd: " "}}.Validate()
	for _, p := range err.(interface{ Unwrap() []error }).Unwrap() {
		vp, ok := p.(interface{ EnvVars() []string })
		if !ok || len(vp.EnvVars()) == 0 {
			t.Errorf("problem %q does not list its variables", p)
			continue
		}
		for _, v := range vp.EnvVars() {
			if !strings.Contains(p.Error(), v) {
				t.Errorf("problem %q lists %s but does not name it", p, v)
			}
		}
	}
}
