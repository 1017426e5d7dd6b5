package wire

import (
	"bufio"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// authEntry is one user of GATEKEEPER_CLIENT_AUTH_FILE, in PgBouncer's
// userlist.txt format: `"user" "secret"` per line.
type authEntry struct {
	// plain is the password when the file holds it in clear: the client is
	// still checked with SCRAM (against a verifier derived at load), and in
	// pass-through mode the password logs in to PostgreSQL.
	plain string
	// scram is the verifier. For a SCRAM entry it must be the server's own
	// (same salt and iterations) for pass-through mode to log in with the
	// keys recovered from the client's proof.
	scram *scramVerifier
	md5   string // hex of md5(password + user), without the "md5" prefix
}

// scramVerifier is PostgreSQL's stored SCRAM-SHA-256 secret.
type scramVerifier struct {
	iterations int
	salt       []byte
	storedKey  []byte
	serverKey  []byte
}

// scramIterations is used for verifiers derived from plain-text entries,
// as PostgreSQL's default scram_iterations.
const scramIterations = 4096

// parseAuthFile reads a userlist. Blank lines and lines starting with ';'
// or '#' are ignored; anything else must be two double-quoted strings (a
// quote inside one is written twice).
func parseAuthFile(r io.Reader) (map[string]*authEntry, error) {
	users := map[string]*authEntry{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		user, rest, err := quotedField(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		secret, rest, err := quotedField(strings.TrimSpace(rest))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if strings.TrimSpace(rest) != "" {
			return nil, fmt.Errorf("line %d: unexpected text after the password", lineNo)
		}
		if user == "" {
			return nil, fmt.Errorf("line %d: empty user name", lineNo)
		}
		entry, err := newAuthEntry(user, secret)
		if err != nil {
			return nil, fmt.Errorf("line %d (user %q): %w", lineNo, user, err)
		}
		users[user] = entry
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return users, nil
}

func quotedField(s string) (field, rest string, err error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", fmt.Errorf(`expected "user" "password"`)
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", fmt.Errorf("unterminated quoted string")
}

func newAuthEntry(user, secret string) (*authEntry, error) {
	switch {
	case strings.HasPrefix(secret, "SCRAM-SHA-256$"):
		v, err := parseSCRAMVerifier(secret)
		if err != nil {
			return nil, err
		}
		return &authEntry{scram: v}, nil
	case len(secret) == 35 && strings.HasPrefix(secret, "md5") && isHex(secret[3:]):
		return &authEntry{md5: secret[3:]}, nil
	default:
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		v, err := deriveSCRAMVerifier(secret, salt, scramIterations)
		if err != nil {
			return nil, err
		}
		return &authEntry{plain: secret, scram: v}, nil
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// parseSCRAMVerifier reads SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
// (PostgreSQL's pg_authid.rolpassword format, base64 fields).
func parseSCRAMVerifier(s string) (*scramVerifier, error) {
	parts := strings.Split(strings.TrimPrefix(s, "SCRAM-SHA-256$"), "$")
	if len(parts) != 2 {
		return nil, fmt.Errorf("malformed SCRAM-SHA-256 secret")
	}
	iterSalt := strings.SplitN(parts[0], ":", 2)
	keys := strings.SplitN(parts[1], ":", 2)
	if len(iterSalt) != 2 || len(keys) != 2 {
		return nil, fmt.Errorf("malformed SCRAM-SHA-256 secret")
	}
	iter, err := strconv.Atoi(iterSalt[0])
	if err != nil || iter < 1 || iter > 10_000_000 {
		return nil, fmt.Errorf("malformed SCRAM-SHA-256 secret: bad iteration count")
	}
	v := &scramVerifier{iterations: iter}
	for _, f := range []struct {
		dst *[]byte
		src string
	}{{&v.salt, iterSalt[1]}, {&v.storedKey, keys[0]}, {&v.serverKey, keys[1]}} {
		if *f.dst, err = base64.StdEncoding.DecodeString(f.src); err != nil {
			return nil, fmt.Errorf("malformed SCRAM-SHA-256 secret: %w", err)
		}
	}
	if len(v.storedKey) != sha256.Size || len(v.serverKey) != sha256.Size {
		return nil, fmt.Errorf("malformed SCRAM-SHA-256 secret: wrong key length")
	}
	return v, nil
}

// deriveSCRAMVerifier computes the stored secret for a password (RFC 5802).
// PostgreSQL applies SASLprep first; passwords outside ASCII that SASLprep
// would change derive a different verifier, as with a non-normalising
// PostgreSQL client.
func deriveSCRAMVerifier(password string, salt []byte, iterations int) (*scramVerifier, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return nil, err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return &scramVerifier{iterations: iterations, salt: salt, storedKey: stored[:], serverKey: hmacSHA256(salted, "Server Key")}, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// authFile is GATEKEEPER_CLIENT_AUTH_FILE, re-read when it changes or on
// Reload (SIGHUP).
type authFile struct {
	path string
	// onReload is told of a reload lookup made by itself (the file
	// changed), so it is logged as SIGHUP's is.
	onReload func(users int)

	mu      sync.RWMutex
	users   map[string]*authEntry
	modTime time.Time
	size    int64
	checked time.Time
}

func loadAuthFile(path string) (*authFile, error) {
	af := &authFile{path: path}
	if err := af.reload(); err != nil {
		return nil, err
	}
	return af, nil
}

func (af *authFile) reload() error {
	f, err := os.Open(af.path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	users, err := parseAuthFile(f)
	if err != nil {
		return err
	}
	af.mu.Lock()
	af.users, af.modTime, af.size, af.checked = users, fi.ModTime(), fi.Size(), time.Now()
	af.mu.Unlock()
	return nil
}

// lookup returns the user's entry, re-reading the file first when it has
// changed (checked at most once a second). A file that no longer parses
// keeps the last good contents; the error is returned for logging.
func (af *authFile) lookup(user string) (*authEntry, error) {
	var err error
	af.mu.RLock()
	stale := time.Since(af.checked) > time.Second
	af.mu.RUnlock()
	if stale {
		if fi, statErr := os.Stat(af.path); statErr == nil {
			af.mu.RLock()
			changed := !fi.ModTime().Equal(af.modTime) || fi.Size() != af.size
			af.mu.RUnlock()
			if changed {
				err = af.reload()
				if err == nil && af.onReload != nil {
					af.mu.RLock()
					n := len(af.users)
					af.mu.RUnlock()
					af.onReload(n)
				}
			}
		}
		af.mu.Lock()
		af.checked = time.Now()
		af.mu.Unlock()
	}
	af.mu.RLock()
	defer af.mu.RUnlock()
	return af.users[user], err
}

// md5Users lists users whose entry is an MD5 hash.
func (af *authFile) md5Users() []string {
	af.mu.RLock()
	defer af.mu.RUnlock()
	var out []string
	for user, e := range af.users {
		if e.md5 != "" {
			out = append(out, user)
		}
	}
	return out
}

// loadedAuthFile is the outcome of reading one auth file.
type loadedAuthFile struct {
	path string
	af   *authFile
	err  error
}

// LoadAuthFile reads GATEKEEPER_CLIENT_AUTH_FILE once for all of start-up:
// Validate, AuthFileMD5Users, AuthFileHasPlain, CheckAuthQuery and
// NewServer then use what it read, and NewServer keeps it (re-reading it
// when it changes, or on SIGHUP). A problem with the file is reported by
// Validate. Without LoadAuthFile each of them reads the file itself.
func (c *Config) LoadAuthFile() {
	if c.ClientAuthFile == "" {
		c.authFile = nil
		return
	}
	af, err := loadAuthFile(c.ClientAuthFile)
	c.authFile = &loadedAuthFile{path: c.ClientAuthFile, af: af, err: err}
}

// clientAuthFile is the auth file c names, as LoadAuthFile read it, or read
// now; nil without one.
func (c Config) clientAuthFile() (*authFile, error) {
	if c.ClientAuthFile == "" {
		return nil, nil
	}
	if l := c.authFile; l != nil && l.path == c.ClientAuthFile {
		return l.af, l.err
	}
	return loadAuthFile(c.ClientAuthFile)
}

// AuthFileMD5Users lists the users of the client auth file whose entry is
// an MD5 hash: in pass-through mode the gateway cannot log in to
// PostgreSQL for them, since an MD5 exchange yields neither their password
// nor SCRAM keys. (SCRAM entries are fine: the keys recovered from the
// client's proof log in to a server holding the same secret.)
func (c Config) AuthFileMD5Users() ([]string, error) {
	af, err := c.clientAuthFile()
	if af == nil || err != nil {
		return nil, err
	}
	users := af.md5Users()
	slices.Sort(users)
	return users, nil
}

// AuthFileHasPlain reports whether the client auth file has a plain-text
// password for user (the auth query's role may take its password from
// there).
func (c Config) AuthFileHasPlain(user string) bool {
	af, err := c.clientAuthFile()
	if af == nil || err != nil {
		return false
	}
	e, _ := af.lookup(user)
	return e != nil && e.plain != ""
}
