package backend

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A login with SCRAM keys against servers that misbehave or hold another
// secret. The happy path runs against PostgreSQL in the wire tests.

func testKeys(password string, salt []byte, iterations int) *SCRAMKeys {
	salted, _ := pbkdf2.Key(sha256.New, password, salt, iterations, 32)
	return &SCRAMKeys{ClientKey: hmacSum(salted, "Client Key"), ServerKey: hmacSum(salted, "Server Key"), Salt: salt, Iterations: iterations}
}

// fakeServer plays the server's side of start-up with script, which gets
// the backend and the client's first SCRAM message.
func loginAgainst(t *testing.T, keys *SCRAMKeys, script func(be *pgproto3.Backend, clientFirst string)) error {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		_ = server.SetDeadline(time.Now().Add(5 * time.Second))
		be := pgproto3.NewBackend(server, server)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}})
		if be.Flush() != nil {
			return
		}
		_ = be.SetAuthType(pgproto3.AuthTypeSASL)
		msg, err := be.Receive()
		if err != nil {
			return
		}
		script(be, string(msg.(*pgproto3.SASLInitialResponse).Data))
	}()
	d := &Dialer{cfg: Config{ConnectTimeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.startupWithKeys(ctx, client, Params{User: "alice", Database: "db", SCRAM: keys})
	if err == nil && c == nil {
		t.Fatal("no connection and no error")
	}
	return err
}

// serverExchange is a correct SCRAM server for a verifier made from
// password, salt and iterations; ok is then sent after the final message.
func serverExchange(password string, salt []byte, iterations int, after func(be *pgproto3.Backend)) func(*pgproto3.Backend, string) {
	return func(be *pgproto3.Backend, clientFirst string) {
		bare := strings.TrimPrefix(clientFirst, "n,,")
		clientNonce := strings.TrimPrefix(strings.Split(bare, ",")[1], "r=")
		serverFirst := fmt.Sprintf("r=%sSERVER,s=%s,i=%d", clientNonce, base64.StdEncoding.EncodeToString(salt), iterations)
		be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
		if be.Flush() != nil {
			return
		}
		_ = be.SetAuthType(pgproto3.AuthTypeSASLContinue)
		msg, err := be.Receive()
		if err != nil {
			return
		}
		final := string(msg.(*pgproto3.SASLResponse).Data)
		withoutProof := final[:strings.LastIndex(final, ",p=")]
		proof, _ := base64.StdEncoding.DecodeString(final[strings.LastIndex(final, ",p=")+3:])
		k := testKeys(password, salt, iterations)
		stored := sha256.Sum256(k.ClientKey)
		authMessage := bare + "," + serverFirst + "," + withoutProof
		sig := hmacSum(stored[:], authMessage)
		for i := range sig {
			sig[i] ^= proof[i]
		}
		if got := sha256.Sum256(sig); !bytes.Equal(got[:], stored[:]) {
			be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "alice"`})
			_ = be.Flush()
			return
		}
		be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=" + base64.StdEncoding.EncodeToString(hmacSum(k.ServerKey, authMessage)))})
		after(be)
	}
}

func ready(be *pgproto3.Backend) {
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	_ = be.Flush()
}

func TestLoginWithSCRAMKeys(t *testing.T) {
	salt := []byte("0123456789abcdef")
	keys := testKeys("pw", salt, 4096)

	if err := loginAgainst(t, keys, serverExchange("pw", salt, 4096, ready)); err != nil {
		t.Fatalf("the right keys: %v", err)
	}

	t.Run("changed secret: another salt", func(t *testing.T) {
		err := loginAgainst(t, keys, serverExchange("new", []byte("fedcba9876543210"), 4096, ready))
		var vm *VerifierMismatchError
		var pgErr *pgconn.PgError
		if !errors.As(err, &vm) || !errors.As(err, &pgErr) || pgErr.Code != "28P01" || !strings.Contains(pgErr.Message, "has changed") {
			t.Fatalf("got %v, want a VerifierMismatchError that is a 28P01", err)
		}
	})
	t.Run("changed secret: same salt, another password", func(t *testing.T) {
		err := loginAgainst(t, keys, serverExchange("new", salt, 4096, ready))
		var vm *VerifierMismatchError
		if !errors.As(err, &vm) {
			t.Fatalf("got %v, want a VerifierMismatchError", err)
		}
	})
	t.Run("another iteration count", func(t *testing.T) {
		err := loginAgainst(t, keys, serverExchange("pw", salt, 8192, ready))
		var vm *VerifierMismatchError
		if !errors.As(err, &vm) {
			t.Fatalf("got %v, want a VerifierMismatchError", err)
		}
	})
	t.Run("a server that cannot prove it holds the secret", func(t *testing.T) {
		forged := *keys
		forged.ServerKey = bytes.Repeat([]byte{7}, 32) // what we expect differs from what it proves
		err := loginAgainst(t, &forged, serverExchange("pw", salt, 4096, ready))
		if err == nil || !strings.Contains(err.Error(), "signature does not match") {
			t.Fatalf("got %v, want the server's signature refused", err)
		}
	})
	t.Run("a server asking for cleartext", func(t *testing.T) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			defer server.Close()
			be := pgproto3.NewBackend(server, server)
			if _, err := be.ReceiveStartupMessage(); err != nil {
				return
			}
			be.Send(&pgproto3.AuthenticationCleartextPassword{})
			_ = be.Flush()
			_, _ = be.Receive()
		}()
		d := &Dialer{cfg: Config{ConnectTimeout: 5 * time.Second}}
		_, err := d.startupWithKeys(context.Background(), client, Params{User: "alice", SCRAM: keys})
		if err == nil || !strings.Contains(err.Error(), "asked for cleartext password authentication") {
			t.Fatalf("got %v, want a refusal naming the method", err)
		}
	})
	for _, tt := range []struct{ name, serverFirst string }{
		{"nonce not extending ours", "r=other,s=c2FsdA==,i=4096"},
		{"huge iteration count", "r=%sX,s=c2FsdA==,i=99999999"},
		{"no salt", "r=%sX,i=4096"},
		{"bad base64 salt", "r=%sX,s=!!!,i=4096"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := loginAgainst(t, keys, func(be *pgproto3.Backend, clientFirst string) {
				nonce := strings.TrimPrefix(strings.Split(clientFirst, ",")[3], "r=")
				msg := tt.serverFirst
				if strings.Contains(msg, "%s") {
					msg = fmt.Sprintf(msg, nonce)
				}
				be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(msg)})
				_ = be.Flush()
				_ = be.SetAuthType(pgproto3.AuthTypeSASLContinue)
				_, _ = be.Receive()
			})
			var se *StartupError
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a StartupError", err)
			}
		})
	}
}

// The refusal starts with PostgreSQL's own text, whose quotes around the
// user name escape nothing, whatever the name holds.
func TestVerifierMismatchQuotesAsPostgreSQL(t *testing.T) {
	err := &VerifierMismatchError{User: `o"k\é`}
	if want := `password authentication failed for user "o"k\é": `; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q does not start with %q", err.Error(), want)
	}
}
