package wire

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
)

// errBadPassword is a client whose credential did not match the auth file.
var errBadPassword = errors.New("password authentication failed")

// The SASL mechanisms offered, as PostgreSQL does: -PLUS (channel binding
// with tls-server-end-point) first, and only to a client on TLS.
const (
	scramMechanism     = "SCRAM-SHA-256"
	scramPlusMechanism = "SCRAM-SHA-256-PLUS"
)

// authenticateFromFile checks the client against its auth file entry:
// SCRAM-SHA-256 for SCRAM and plain-text entries, MD5 for md5 entries. A
// user not in the file goes through a SCRAM exchange against a random
// verifier, so the answer does not tell which users exist. It returns what
// the backend login can use: the plain-text password when the file has
// one, or the SCRAM keys recovered from the client's proof.
func (ss *session) authenticateFromFile(user string, entry *authEntry) (clientCredential, error) {
	if entry != nil && entry.md5 != "" {
		return clientCredential{method: methodMD5}, ss.md5Exchange(entry.md5)
	}
	verifier := (*scramVerifier)(nil)
	if entry != nil {
		verifier = entry.scram
	}
	if verifier == nil {
		verifier = ss.srv.decoyVerifier(user)
	}
	keys, err := ss.scramExchange(verifier)
	if err != nil {
		return clientCredential{}, err
	}
	if entry == nil {
		return clientCredential{}, errBadPassword
	}
	method := methodSCRAM
	if keys.ChannelBound {
		method = methodSCRAMPlus
	}
	if entry.plain != "" {
		return clientCredential{password: entry.plain, method: method}, nil
	}
	return clientCredential{scram: keys, method: method}, nil
}

// decoyVerifier stands in for a user the gateway has no verifier for: the
// same salt every time for a given name, as for a real user, and keys no
// proof can match, so the exchange does not tell which users exist.
func (s *Server) decoyVerifier(user string) *scramVerifier {
	salt := hmacSHA256(s.decoySecret[:], "decoy salt for "+user)[:16]
	key := make([]byte, sha256.Size)
	_, _ = rand.Read(key)
	return &scramVerifier{iterations: scramIterations, salt: salt, storedKey: key, serverKey: key}
}

func (ss *session) md5Exchange(stored string) error {
	var salt [4]byte
	_, _ = rand.Read(salt[:])
	if err := ss.writeMsg(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	body, err := ss.readAuthMessage()
	if err != nil {
		return err
	}
	if len(body) == 0 || body[len(body)-1] != 0 {
		return protocolErrorf("invalid password packet")
	}
	// The client sends "md5" + md5(md5(password + user) + salt); the file
	// holds the inner hash, as pg_authid does.
	got := body[:len(body)-1]
	sum := md5.Sum(append([]byte(stored), salt[:]...))
	want := "md5" + hex.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare(got, []byte(want)) != 1 {
		return errBadPassword
	}
	return nil
}

// scramExchange is the server side of SCRAM-SHA-256(-PLUS) against v, as
// PostgreSQL's auth-scram.c. On success it returns the keys that log in to
// a server holding the same verifier: the ClientKey, recovered from the
// proof (proof XOR HMAC(StoredKey, AuthMessage)), with v's ServerKey, salt
// and iterations.
func (ss *session) scramExchange(v *scramVerifier) (*backend.SCRAMKeys, error) {
	cbData := ss.channelBindingData()
	mechanisms := []string{scramMechanism}
	if cbData != nil {
		mechanisms = []string{scramPlusMechanism, scramMechanism}
	}
	if err := ss.writeMsg(&pgproto3.AuthenticationSASL{AuthMechanisms: mechanisms}); err != nil {
		return nil, err
	}
	body, err := ss.readAuthMessage()
	if err != nil {
		return nil, err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return nil, protocolErrorf("malformed SASLInitialResponse")
	}
	plus := initial.AuthMechanism == scramPlusMechanism && cbData != nil
	if initial.AuthMechanism != scramMechanism && !plus {
		return nil, protocolErrorf("client selected an invalid SASL authentication mechanism")
	}
	clientFirst := string(initial.Data)
	gs2, bare, err := splitGS2(clientFirst, plus, cbData != nil)
	if err != nil {
		return nil, err
	}
	clientNonce, ok := scramAttr(bare, 'r')
	if !ok || clientNonce == "" {
		return nil, protocolErrorf("malformed SCRAM message (missing client nonce)")
	}
	nonceBytes := make([]byte, 18)
	_, _ = rand.Read(nonceBytes)
	nonce := clientNonce + base64.StdEncoding.EncodeToString(nonceBytes)
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", nonce, base64.StdEncoding.EncodeToString(v.salt), v.iterations)
	if err := ss.writeMsg(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return nil, err
	}
	body, err = ss.readAuthMessage()
	if err != nil {
		return nil, err
	}
	clientFinal := string(body) // SASLResponse is the raw data
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return nil, protocolErrorf("malformed SCRAM message (missing proof)")
	}
	withoutProof, proofB64 := clientFinal[:i], clientFinal[i+3:]
	// c= is the GS2 header, followed with -PLUS by the hash of the
	// certificate this client was served: a man in the middle with another
	// certificate cannot replay the client's proof to us.
	wantBinding := []byte(gs2)
	if plus {
		wantBinding = append(wantBinding, cbData...)
	}
	binding, ok := scramAttr(withoutProof, 'c')
	if !ok || binding != base64.StdEncoding.EncodeToString(wantBinding) {
		return nil, protocolErrorf("SCRAM channel binding check failed")
	}
	if got, ok := scramAttr(withoutProof, 'r'); !ok || got != nonce {
		return nil, protocolErrorf("SCRAM nonce mismatch")
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != sha256.Size {
		return nil, protocolErrorf("malformed SCRAM message (invalid proof)")
	}
	authMessage := bare + "," + serverFirst + "," + withoutProof
	clientSignature := hmacSHA256(v.storedKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for k := range clientKey {
		clientKey[k] = proof[k] ^ clientSignature[k]
	}
	stored := sha256.Sum256(clientKey)
	if !hmac.Equal(stored[:], v.storedKey) {
		return nil, errBadPassword
	}
	serverSignature := hmacSHA256(v.serverKey, authMessage)
	final := "v=" + base64.StdEncoding.EncodeToString(serverSignature)
	buf, _ := (&pgproto3.AuthenticationSASLFinal{Data: []byte(final)}).Encode(nil)
	ss.writeMu.Lock()
	ss.authFinal = buf // sent with AuthenticationOk, or the FATAL
	ss.writeMu.Unlock()
	return &backend.SCRAMKeys{ClientKey: clientKey, ServerKey: v.serverKey, Salt: v.salt, Iterations: v.iterations, ChannelBound: plus}, nil
}

// splitGS2 splits "n,,n=user,r=nonce" into the GS2 header ("n,,") and the
// bare message, with PostgreSQL's checks of the channel binding flag
// against the mechanism chosen (plus) and whether -PLUS was offered.
func splitGS2(msg string, plus, offeredPlus bool) (header, bare string, err error) {
	if msg == "" {
		return "", "", protocolErrorf("malformed SCRAM message (empty client-first-message)")
	}
	rest := ""
	switch msg[0] {
	case 'p':
		name, after, ok := strings.Cut(msg, ",")
		if !ok {
			return "", "", protocolErrorf("malformed SCRAM message (client-first-message)")
		}
		if !plus {
			return "", "", protocolErrorf("the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data")
		}
		if name != "p=tls-server-end-point" {
			return "", "", protocolErrorf("unsupported SCRAM channel-binding type %s", quoteName(strings.TrimPrefix(name, "p=")))
		}
		rest = after
	case 'y', 'n':
		if len(msg) < 2 || msg[1] != ',' {
			return "", "", protocolErrorf("malformed SCRAM message (client-first-message)")
		}
		if plus {
			return "", "", protocolErrorf("the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data")
		}
		if msg[0] == 'y' && offeredPlus {
			// The client could bind but believes we cannot: someone in
			// between removed -PLUS from our offer (RFC 5802 §6).
			return "", "", protocolErrorf("SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the server does not, and this server does support it")
		}
		rest = msg[2:]
	default:
		return "", "", protocolErrorf("malformed SCRAM message (unexpected channel-binding flag)")
	}
	authzid, bare, ok := strings.Cut(rest, ",")
	if !ok {
		return "", "", protocolErrorf("malformed SCRAM message (client-first-message)")
	}
	if authzid != "" {
		return "", "", protocolErrorf("client uses authorization identity, but it is not supported")
	}
	return msg[:len(msg)-len(bare)], bare, nil
}

// scramAttr finds attribute "k=value" in a comma-separated SCRAM message.
func scramAttr(msg string, k byte) (string, bool) {
	for _, part := range strings.Split(msg, ",") {
		if len(part) >= 2 && part[0] == k && part[1] == '=' {
			return part[2:], true
		}
	}
	return "", false
}

func (ss *session) writeMsg(msg pgproto3.BackendMessage) error {
	buf, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = ss.conn.Write(buf)
	return err
}

// readAuthMessage reads the client's next authentication message ('p').
func (ss *session) readAuthMessage() ([]byte, error) {
	typ, body, err := readMessage(ss.conn, maxPasswordLen)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errClientGone
		}
		return nil, err
	}
	if typ == 'X' {
		return nil, errClientGone
	}
	if typ != 'p' {
		return nil, protocolErrorf("expected password response, got message type %q", typ)
	}
	return body, nil
}
