package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction mode, settings: the SETs a client's session carries from
// backend to backend, when they take effect (as PostgreSQL keeps them),
// the SQL that brings a backend in line with a client, and pinning.

// unknownSettings is the fingerprint of a backend whose settings are not
// known; no client's fingerprint equals it.
const unknownSettings = "?"

// settleSetsLocked records the tracked SETs a ReadyForQuery answered, as
// PostgreSQL keeps them: at once outside a transaction block; inside one,
// only if the block commits (ROLLBACK, an error or a failed COMMIT undo
// them).
func (tx *txSession) settleSetsLocked(att *attachment, batch int, prev byte) {
	kept := att.pendingSets[:0]
	for _, set := range att.pendingSets {
		switch {
		case set.seq > batch:
			kept = append(kept, set)
		case set.seq < batch || att.errInBatch:
			// failed or skipped
		case att.txStatus == 'I':
			tx.applySetLocked(att, set)
		case att.txStatus == 'T':
			att.txSets = append(att.txSets, set)
		}
	}
	clear(att.pendingSets[len(kept):])
	att.pendingSets = kept
	if att.txStatus == 'I' && batch >= att.savepointSeq {
		att.sawSavepoint = false
	}
	end := txEndNone
	done := 0
	for _, e := range att.ends {
		if e.seq > batch {
			break
		}
		if e.seq == batch {
			end = e.end
		}
		done++
	}
	att.ends = append(att.ends[:0], att.ends[done:]...)
	ended := att.txStatus == 'I' && prev != 'I'
	if !ended && end == txEndNone {
		return
	}
	// A transaction block ended with this batch.
	switch {
	case len(att.txSets) == 0:
	case ended && prev == 'T' && !att.errInBatch && end == txEndCommit:
		for _, set := range att.txSets {
			tx.applySetLocked(att, set)
		}
	case ended && (prev == 'E' || end == txEndRollback || end == txEndCommit && att.errInBatch):
		// rolled back
	default:
		// The block ended in a way the gateway cannot follow (COMMIT
		// among other statements, a new block begun in the same query,
		// PREPARE TRANSACTION): the backend may hold the client's SETs,
		// so it stays the client's.
		tx.pinLocked(pinSet)
	}
	att.txSets = nil
}

// applySetLocked records a session-level SET, RESET or DISCARD ALL that
// took effect, so the client's settings follow it to every backend it
// borrows, and the backend's record says what it now holds. RESET goes
// back to the start-up value, as in PostgreSQL; on the backend it goes
// back to the pool's default, so the start-up value is applied again on
// the next attach.
func (tx *txSession) applySetLocked(att *attachment, set *setCommand) {
	have := att.state.settings
	switch {
	case set.resetAll, set.discardAll:
		tx.settings = cloneMap(tx.startup)
		att.state.settings = map[string]string{}
		for _, name := range sortedKeys(tx.startupValues) {
			tx.reportStartupLocked(att, name)
		}
	case set.reset:
		tx.reportStartupLocked(att, set.name)
		if v, ok := tx.startup[set.name]; ok {
			tx.settings[set.name] = v
		} else {
			delete(tx.settings, set.name)
		}
		if have != nil {
			delete(have, set.name)
		}
	default:
		tx.settings[set.name] = set.statement
		if have != nil {
			have[set.name] = set.statement
		}
	}
	tx.fp = fingerprint(tx.settings)
	if att.state.settings == nil {
		att.state.settingsFP = unknownSettings
	} else {
		att.state.settingsFP = fingerprint(att.state.settings)
	}
}

// nonASCIISettingsLocked reports whether a setting of the client other
// than client_encoding has bytes beyond ASCII, whose meaning depends on
// the encoding in force.
func (tx *txSession) nonASCIISettingsLocked() bool {
	for name, stmt := range tx.settings {
		if name == "client_encoding" {
			continue
		}
		for i := 0; i < len(stmt); i++ {
			if stmt[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}

// reportedSettings are the settings PostgreSQL reports to clients that a
// start-up packet may set, by lower-case name, as the server spells them.
var reportedSettings = map[string]string{
	"application_name": "application_name", "client_encoding": "client_encoding",
	"datestyle": "DateStyle", "intervalstyle": "IntervalStyle", "timezone": "TimeZone",
	"standard_conforming_strings":   "standard_conforming_strings",
	"default_transaction_read_only": "default_transaction_read_only",
}

// reportStartupLocked tells the client, before the ReadyForQuery that ends
// its RESET, that a reported setting it gave at start-up is back to that
// value. The backend went to its own default and reported that (or, if
// the value did not change, nothing); the client's session is its
// start-up value again from its next transaction, as on a direct
// connection. A client left believing otherwise would act on a value its
// session does not have: libpq escapes strings by what it was told of
// standard_conforming_strings.
func (tx *txSession) reportStartupLocked(att *attachment, name string) {
	v, ok := tx.startupValues[name]
	spelled, reported := reportedSettings[name]
	if !ok || !reported {
		return
	}
	att.reports, _ = (&pgproto3.ParameterStatus{Name: spelled, Value: v}).Encode(att.reports)
}

// pinLocked keeps the client on its backend until it disconnects. Called
// with tx.mu held.
func (tx *txSession) pinLocked(reason pinReason) {
	if tx.pinned != "" {
		return
	}
	tx.pinned = reason
	tx.ss.srv.counters.pin(reason)
	tx.ss.srv.pinnedNow.Add(1)
	tx.ss.setView(func(v *ClientInfo) { v.Pinned = string(reason) })
	tx.ss.log.Info().Str("reason", string(reason)).Msg("client pinned to its backend until it disconnects")
}

// fingerprint identifies a set of settings, so a backend whose settings
// already match the client's costs no round trip.
func fingerprint(settings map[string]string) string {
	if len(settings) == 0 {
		return ""
	}
	h := sha256.New()
	for _, name := range sortedKeys(settings) {
		h.Write([]byte(name))
		h.Write([]byte{0})
		h.Write([]byte(settings[name]))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// settingsDiff is the SQL that turns a backend's settings from have into
// want: RESET what only have set, and apply what want sets differently.
//
// A change of client_encoding (and RESET ALL) is a query of its own, run
// first: the server converts a whole query string from the encoding in
// force when it arrives, and the client wrote its other settings in the
// encoding it has now (one that changes it after writing others with
// bytes beyond ASCII is pinned instead).
func settingsDiff(have, want map[string]string) []string {
	var first, q []byte
	if have == nil {
		first = append(first, "RESET ALL;"...)
	}
	for _, name := range sortedKeys(have) {
		if _, ok := want[name]; !ok {
			stmt := "RESET " + quoteQualified(name) + ";"
			if name == "client_encoding" {
				first = append(first, stmt...)
			} else {
				q = append(q, stmt...)
			}
		}
	}
	for _, name := range sortedKeys(want) {
		if have[name] != want[name] {
			if name == "client_encoding" {
				first = append(append(first, want[name]...), ';')
			} else {
				q = append(append(q, want[name]...), ';')
			}
		}
	}
	var queries []string
	for _, b := range [][]byte{first, q} {
		if len(b) > 0 {
			queries = append(queries, string(b))
		}
	}
	return queries
}

// startupRestoreLocked is the SQL that puts back the start-up values a
// tracked RESET, RESET ALL or DISCARD ALL of the client is about to reset
// on the backend (to the pool's defaults, not the client's start-up
// values), or "" when there are none.
func (tx *txSession) startupRestoreLocked(fx queryEffects) string {
	set := fx.set
	if set == nil || fx.pin != "" || len(tx.startup) == 0 {
		return ""
	}
	switch {
	case set.resetAll || set.discardAll:
		var q []string
		for _, name := range sortedKeys(tx.startup) {
			q = append(q, tx.startup[name])
		}
		return strings.Join(q, ";")
	case set.reset:
		return tx.startup[set.name]
	}
	return ""
}
