package wire

import (
	"encoding/binary"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Handoff: the end of the client's start-up, once it is authenticated and
// the pool has admitted it.

// handoff completes the client's start-up in one write: the parameters the
// server reports for this pool, with the client's own start-up values in
// place (they are applied when a backend is attached), and the gateway's
// own cancel key.
func (ss *session) handoff(server map[string]string, settings []startupSetting) error {
	reported := maps.Clone(server)
	for _, st := range settings {
		for name := range reported {
			if strings.EqualFold(name, st.name) {
				reported[name] = st.value
			}
		}
	}
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for _, name := range slices.Sorted(maps.Keys(reported)) {
		buf, _ = (&pgproto3.ParameterStatus{Name: name, Value: reported[name]}).Encode(buf)
	}
	var secret [4]byte
	binary.BigEndian.PutUint32(secret[:], ss.key.secret)
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: ss.key.pid, SecretKey: secret[:]}).Encode(buf)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	_, err := ss.conn.Write(ss.withAuthFinal(buf))
	return err
}
