package wire

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// Adversarial SCRAM clients against the server side, on a session that
// negotiated TLS: every way of getting channel binding wrong is refused,
// and the right exchange yields the ClientKey a server holding the same
// verifier accepts.

func testCert(t testing.TB) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

type scramCase struct {
	mechanism string
	gs2       string
	cbData    []byte // appended to gs2 in c=
}

// runClient plays one SCRAM client with the right password; it returns
// the mechanisms offered and the server's error or keys.
func runClient(t *testing.T, ss *session, v *scramVerifier, password string, sc func(offered []string) scramCase) ([]string, *backend.SCRAMKeys, error) {
	t.Helper()
	server, client := net.Pipe()
	ss.conn = server
	type result struct {
		keys *backend.SCRAMKeys
		err  error
	}
	done := make(chan result, 1)
	go func() {
		k, err := ss.scramExchange(v)
		done <- result{k, err}
		server.Close()
	}()
	defer client.Close()
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(client, client)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	offered := msg.(*pgproto3.AuthenticationSASL).AuthMechanisms
	c := sc(offered)
	bare := "n=,r=clientnonce"
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: c.mechanism, Data: []byte(c.gs2 + bare)})
	if fe.Flush() == nil {
		if msg, err := fe.Receive(); err == nil {
			if cont, ok := msg.(*pgproto3.AuthenticationSASLContinue); ok {
				serverFirst := string(cont.Data)
				nonce, _ := scramAttr(serverFirst, 'r')
				withoutProof := "c=" + base64.StdEncoding.EncodeToString(append([]byte(c.gs2), c.cbData...)) + ",r=" + nonce
				salted, _ := pbkdf2.Key(sha256.New, password, v.salt, v.iterations, 32)
				clientKey := hmacSHA256(salted, "Client Key")
				stored := sha256.Sum256(clientKey)
				sig := hmacSHA256(stored[:], bare+","+serverFirst+","+withoutProof)
				for i := range sig {
					sig[i] ^= clientKey[i]
				}
				fe.Send(&pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(sig))})
				_ = fe.Flush()
				_, _ = fe.Receive()
			}
		}
	}
	r := <-done
	return offered, r.keys, r.err
}

func TestSCRAMChannelBinding(t *testing.T) {
	cert := testCert(t)
	cb, err := backend.TLSServerEndPoint(cert.Leaf)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := deriveSCRAMVerifier("secret", []byte("saltsaltsaltsalt"), 4096)
	tlsSession := func() *session { return &session{srv: &Server{}, log: zerolog.Nop(), tls: true, tlsCert: cert} }
	plainSession := func() *session { return &session{srv: &Server{}, log: zerolog.Nop()} }

	t.Run("PLUS with the served certificate's hash", func(t *testing.T) {
		offered, keys, err := runClient(t, tlsSession(), v, "secret", func([]string) scramCase {
			return scramCase{scramPlusMechanism, "p=tls-server-end-point,,", cb}
		})
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		if strings.Join(offered, ",") != "SCRAM-SHA-256-PLUS,SCRAM-SHA-256" {
			t.Errorf("offered %v, want PLUS first as PostgreSQL", offered)
		}
		salted, _ := pbkdf2.Key(sha256.New, "secret", v.salt, v.iterations, 32)
		if want := hmacSHA256(salted, "Client Key"); !bytes.Equal(keys.ClientKey, want) {
			t.Error("the recovered ClientKey is not the client's")
		}
		if keys.Iterations != v.iterations || !bytes.Equal(keys.Salt, v.salt) || !bytes.Equal(keys.ServerKey, v.serverKey) {
			t.Error("the keys do not carry the verifier's salt, iterations and ServerKey")
		}
	})
	t.Run("plain SCRAM over TLS with n,,", func(t *testing.T) {
		// A client that cannot bind (e.g. channel_binding=disable) may
		// still use SCRAM-SHA-256, as with PostgreSQL.
		if _, _, err := runClient(t, tlsSession(), v, "secret", func([]string) scramCase {
			return scramCase{scramMechanism, "n,,", nil}
		}); err != nil {
			t.Fatalf("refused: %v", err)
		}
	})

	for _, tt := range []struct {
		name string
		ss   func() *session
		sc   scramCase
		want string
	}{
		{"another certificate's hash (a man in the middle)", tlsSession,
			scramCase{scramPlusMechanism, "p=tls-server-end-point,,", bytes.Repeat([]byte{1}, 32)}, "channel binding check failed"},
		{"PLUS without binding data", tlsSession,
			scramCase{scramPlusMechanism, "p=tls-server-end-point,,", nil}, "channel binding check failed"},
		{"PLUS with a y flag", tlsSession,
			scramCase{scramPlusMechanism, "y,,", nil}, "does not include channel binding data"},
		{"y flag although PLUS was offered (a downgrade)", tlsSession,
			scramCase{scramMechanism, "y,,", nil}, "channel binding negotiation error"},
		{"binding data with the plain mechanism", tlsSession,
			scramCase{scramMechanism, "p=tls-server-end-point,,", cb}, "includes channel binding data"},
		{"another channel binding type", tlsSession,
			scramCase{scramPlusMechanism, "p=tls-unique,,", cb}, "unsupported SCRAM channel-binding type"},
		{"a huge channel binding type is not repeated whole", tlsSession,
			scramCase{scramPlusMechanism, "p=" + strings.Repeat("x", 60000) + ",,", cb}, `type "` + strings.Repeat("x", 64) + `..."`},
		{"an authorization identity", tlsSession,
			scramCase{scramPlusMechanism, "p=tls-server-end-point,a=admin,", cb}, "authorization identity"},
		{"PLUS without TLS", plainSession,
			scramCase{scramPlusMechanism, "p=tls-server-end-point,,", cb}, "invalid SASL authentication mechanism"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ss := tt.ss()
			offered, _, err := runClient(t, ss, v, "secret", func([]string) scramCase { return tt.sc })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
			var pe *protocolError
			if !errors.As(err, &pe) {
				t.Errorf("%v is not a protocol violation (08P01)", err)
			}
			if !ss.tls && len(offered) != 1 {
				t.Errorf("offered %v without TLS", offered)
			}
		})
	}
	t.Run("y flag without TLS is fine", func(t *testing.T) {
		if _, _, err := runClient(t, plainSession(), v, "secret", func([]string) scramCase {
			return scramCase{scramMechanism, "y,,", nil}
		}); err != nil {
			t.Fatalf("refused: %v", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		_, _, err := runClient(t, tlsSession(), v, "not-it", func([]string) scramCase {
			return scramCase{scramPlusMechanism, "p=tls-server-end-point,,", cb}
		})
		if err != errBadPassword {
			t.Fatalf("got %v, want errBadPassword", err)
		}
	})
}

// The channel binding is to the certificate this client was served, even
// when the current one changes between handshakes (a reload): each
// handshake records its own.
func TestChannelBindingFollowsServedCertificate(t *testing.T) {
	certs := []*tls.Certificate{testCert(t), testCert(t)}
	next := 0
	get := recordServed(func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c := certs[next%2]
		next++
		return c, nil
	})
	for i := range 4 {
		server, client := net.Pipe()
		ss := &session{srv: &Server{}, log: zerolog.Nop(), tls: true}
		done := make(chan error, 1)
		go func() {
			done <- ss.tlsHandshake(tls.Server(server, &tls.Config{GetCertificate: get}))
		}()
		tc := tls.Client(client, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		peer := tc.ConnectionState().PeerCertificates[0]
		want, _ := backend.TLSServerEndPoint(peer)
		if got := ss.channelBindingData(); !bytes.Equal(got, want) {
			t.Errorf("handshake %d: binding data is not the hash of the certificate the client saw", i)
		}
		tc.Close()
		server.Close()
	}
}
