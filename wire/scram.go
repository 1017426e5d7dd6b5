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
)

// errBadPassword is a client whose credential did not match the auth file.
var errBadPassword = errors.New("password authentication failed")

// scramMechanism is the only SASL mechanism offered. Without -PLUS no
// channel binding is negotiated, so a client that could bind ("y,,") is
// accepted (RFC 5802 §6).
const scramMechanism = "SCRAM-SHA-256"

// authenticateFromFile checks the client against its auth file entry:
// SCRAM-SHA-256 for SCRAM and plain-text entries, MD5 for md5 entries. A
// user not in the file goes through a SCRAM exchange against a random
// verifier, so the answer does not tell which users exist. It returns the
// plain-text password when the file has one.
func (ss *session) authenticateFromFile(user string, entry *authEntry) (string, error) {
	if entry != nil && entry.md5 != "" {
		return "", ss.md5Exchange(entry.md5)
	}
	verifier := (*scramVerifier)(nil)
	if entry != nil {
		verifier = entry.scram
	}
	if verifier == nil {
		// The same salt every time for a given name, as for a real user, so
		// the exchange does not tell which users exist.
		salt := hmacSHA256(ss.srv.decoySecret[:], "decoy salt for "+user)[:16]
		key := make([]byte, sha256.Size)
		_, _ = rand.Read(key)
		verifier = &scramVerifier{iterations: scramIterations, salt: salt, storedKey: key, serverKey: key}
	}
	if err := ss.scramExchange(verifier); err != nil {
		return "", err
	}
	if entry == nil {
		return "", errBadPassword
	}
	return entry.plain, nil
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

func (ss *session) scramExchange(v *scramVerifier) error {
	if err := ss.writeMsg(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	body, err := ss.readAuthMessage()
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return protocolErrorf("malformed SASLInitialResponse")
	}
	if initial.AuthMechanism != scramMechanism {
		return protocolErrorf("client selected an invalid SASL authentication mechanism")
	}
	clientFirst := string(initial.Data)
	gs2, bare, ok := splitGS2(clientFirst)
	if !ok {
		return protocolErrorf("malformed SCRAM message (client-first-message)")
	}
	clientNonce, ok := scramAttr(bare, 'r')
	if !ok || clientNonce == "" {
		return protocolErrorf("malformed SCRAM message (missing client nonce)")
	}
	nonceBytes := make([]byte, 18)
	_, _ = rand.Read(nonceBytes)
	nonce := clientNonce + base64.StdEncoding.EncodeToString(nonceBytes)
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", nonce, base64.StdEncoding.EncodeToString(v.salt), v.iterations)
	if err := ss.writeMsg(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return err
	}
	body, err = ss.readAuthMessage()
	if err != nil {
		return err
	}
	clientFinal := string(body) // SASLResponse is the raw data
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return protocolErrorf("malformed SCRAM message (missing proof)")
	}
	withoutProof, proofB64 := clientFinal[:i], clientFinal[i+3:]
	binding, ok := scramAttr(withoutProof, 'c')
	if !ok || binding != base64.StdEncoding.EncodeToString([]byte(gs2)) {
		return protocolErrorf("SCRAM channel binding check failed")
	}
	if got, ok := scramAttr(withoutProof, 'r'); !ok || got != nonce {
		return protocolErrorf("SCRAM nonce mismatch")
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != sha256.Size {
		return protocolErrorf("malformed SCRAM message (invalid proof)")
	}
	authMessage := bare + "," + serverFirst + "," + withoutProof
	clientSignature := hmacSHA256(v.storedKey, authMessage)
	clientKey := make([]byte, sha256.Size)
	for k := range clientKey {
		clientKey[k] = proof[k] ^ clientSignature[k]
	}
	stored := sha256.Sum256(clientKey)
	if !hmac.Equal(stored[:], v.storedKey) {
		return errBadPassword
	}
	serverSignature := hmacSHA256(v.serverKey, authMessage)
	final := "v=" + base64.StdEncoding.EncodeToString(serverSignature)
	return ss.writeMsg(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// splitGS2 splits "n,,n=user,r=nonce" into the GS2 header ("n,,") and the
// bare message. Channel binding ("p=") is refused: it was not offered.
func splitGS2(msg string) (header, bare string, ok bool) {
	if len(msg) < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',' {
		return "", "", false
	}
	j := strings.IndexByte(msg[2:], ',')
	if j < 0 {
		return "", "", false
	}
	return msg[:3+j], msg[3+j:], true
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
