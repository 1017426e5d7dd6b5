package wire_test

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

	"github.com/querycop/querycop/wire"
)

// validateTestPair writes a freshly generated self-signed certificate and
// its key to dir and returns their paths.
func validateTestPair(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := validateTestPair(t, dir, "a")
	_, keyB := validateTestPair(t, dir, "b")

	good := func() wire.Config {
		return wire.Config{ListenAddr: "127.0.0.1", ListenPort: 15432, LoginTimeout: 15 * time.Second, MaxClientConn: 1000, MaxPreparedStatements: 200, MaxMessageSize: 1 << 20}
	}
	for _, tc := range []struct {
		name   string
		adjust func(*wire.Config)
		want   []string // substrings of distinct problems; none means valid
	}{
		{"ok/defaults", func(c *wire.Config) {}, nil},
		{"ok/tls-pair", func(c *wire.Config) { c.TLSCert, c.TLSKey = certA, keyA }, nil},
		{"port/zero", func(c *wire.Config) { c.ListenPort = 0 }, []string{"GATEKEEPER_LISTEN_PORT=0 is not a TCP port; use 1 to 65535"}},
		{"port/too-big", func(c *wire.Config) { c.ListenPort = 70000 }, []string{"GATEKEEPER_LISTEN_PORT=70000 is not a TCP port"}},
		{"max-client-conn/zero", func(c *wire.Config) { c.MaxClientConn = 0 }, []string{"GATEKEEPER_MAX_CLIENT_CONN=0 must be at least 1"}},
		{"login-timeout/zero", func(c *wire.Config) { c.LoginTimeout = 0 }, []string{"GATEKEEPER_CLIENT_LOGIN_TIMEOUT=0s must be positive"}},
		{"tls/cert-without-key", func(c *wire.Config) { c.TLSCert = certA },
			[]string{"GATEKEEPER_PROXY_TLS_CERT is set but GATEKEEPER_PROXY_TLS_KEY is not"}},
		{"tls/key-without-cert", func(c *wire.Config) { c.TLSKey = keyA },
			[]string{"GATEKEEPER_PROXY_TLS_KEY is set but GATEKEEPER_PROXY_TLS_CERT is not"}},
		{"tls/mismatched-key", func(c *wire.Config) { c.TLSCert, c.TLSKey = certA, keyB },
			[]string{"GATEKEEPER_PROXY_TLS_CERT and GATEKEEPER_PROXY_TLS_KEY do not load as a certificate and key pair: tls: private key does not match public key"}},
		{"tls/missing-file", func(c *wire.Config) { c.TLSCert, c.TLSKey = filepath.Join(dir, "nope.crt"), keyA },
			[]string{"do not load as a certificate and key pair: open " + filepath.Join(dir, "nope.crt")}},
		{"tls/swapped", func(c *wire.Config) { c.TLSCert, c.TLSKey = keyA, certA },
			[]string{"GATEKEEPER_PROXY_TLS_CERT and GATEKEEPER_PROXY_TLS_KEY do not load"}},
		{"all-at-once", func(c *wire.Config) {
			*c = wire.Config{TLSKey: keyA, MaxPreparedStatements: 1, MaxMessageSize: 1 << 20}
		},
			[]string{"LISTEN_PORT=0", "MAX_CLIENT_CONN=0", "CLIENT_LOGIN_TIMEOUT=0s", "PROXY_TLS_KEY is set but"}},
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
			for _, p := range probs {
				if vp, ok := p.(interface{ EnvVars() []string }); !ok || len(vp.EnvVars()) == 0 {
					t.Errorf("problem %q does not list its variables", p)
				}
			}
			// The key file's contents must never reach an error text.
			if data, _ := os.ReadFile(keyA); strings.Contains(err.Error(), strings.Split(string(data), "\n")[1]) {
				t.Errorf("problems contain key material:\n%v", err)
			}
		})
	}
}

// TestAuthFileLoadedOnce: once LoadAuthFile has read the auth file, the
// start-up checks use what it read and do not read the file again (it is
// gone here), while a Config that never loaded it reads the file itself.
func TestAuthFileLoadedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte(`"bob" "md5a3556571e93b0d20722ba62be61e8c2d"`+"\n"+`"qc_auth" "pw"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := wire.Config{ListenAddr: "127.0.0.1", ListenPort: 15432, LoginTimeout: 15 * time.Second, MaxClientConn: 1000,
		MaxPreparedStatements: 200, MaxMessageSize: 1 << 20, ClientAuthFile: path}
	fresh := cfg
	cfg.LoadAuthFile()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate after LoadAuthFile, file since removed: %v", err)
	}
	if users, err := cfg.AuthFileMD5Users(); err != nil || len(users) != 1 || users[0] != "bob" {
		t.Errorf("AuthFileMD5Users = %v, %v; want [bob]", users, err)
	}
	if !cfg.AuthFileHasPlain("qc_auth") {
		t.Error("AuthFileHasPlain(qc_auth) = false, want true")
	}
	if err := fresh.Validate(); err == nil || !strings.Contains(err.Error(), "GATEKEEPER_CLIENT_AUTH_FILE cannot be used") {
		t.Errorf("Validate without LoadAuthFile, file removed: %v; want the file refused", err)
	}
}
