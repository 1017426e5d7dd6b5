package wire

import (
	"fmt"
	"sort"
	"strings"
)

// startupSetting is one run-time parameter a client asked for at start-up.
type startupSetting struct{ name, value string }

// clientSettings turns the start-up parameters other than user and database
// into the settings to apply on a pooled backend, which was dialled without
// them. It follows PostgreSQL's process_startup_options: the -c settings in
// "options" come first, then the plain parameters (sorted by name, since the
// map has lost the packet order), and a later setting of the same name wins.
// GUC names are case-insensitive, so duplicates are found case-insensitively;
// the surviving setting keeps its own spelling.
//
// Parameters a pool cannot honour are refused with an error naming them: a
// replication connection, and any switch in "options" other than
// -c name=value or --name=value.
func clientSettings(params map[string]string) ([]startupSetting, error) {
	if v, ok := params["replication"]; ok {
		switch strings.ToLower(v) {
		case "false", "off", "no", "0":
		default:
			return nil, fmt.Errorf("querycop does not support replication connections (start-up parameter \"replication\" is %s)", quoteName(v))
		}
	}
	settings, err := parseOptions(params["options"])
	if err != nil {
		return nil, err
	}
	var plain []string
	for name := range params {
		switch name {
		case "user", "database", "options", "replication":
		default:
			plain = append(plain, name)
		}
	}
	sort.Strings(plain)
	for _, name := range plain {
		settings = append(settings, startupSetting{name, params[name]})
	}

	// Keep one setting per name, holding the last value, so the query never
	// depends on set_config being applied in order.
	out := settings[:0]
	at := make(map[string]int, len(settings))
	for _, s := range settings {
		key := strings.ToLower(s.name)
		if i, ok := at[key]; ok {
			out[i] = s
			continue
		}
		at[key] = len(out)
		out = append(out, s)
	}
	return out, nil
}

// parseOptions reads the "options" start-up parameter the way PostgreSQL's
// pg_split_opts and process_postgres_switches do, keeping only the switches
// that set a GUC: other server switches (-d, -e, -o, ...) change how a
// backend runs and cannot be applied to one that is already running.
func parseOptions(opts string) ([]startupSetting, error) {
	words := splitOptions(opts)
	var settings []startupSetting
	for i := 0; i < len(words); i++ {
		w := words[i]
		var arg, shown string
		switch {
		case w == "-c":
			if i+1 == len(words) {
				return nil, fmt.Errorf("start-up option \"-c\" in \"options\" requires name=value")
			}
			i++
			arg, shown = words[i], "-c "+words[i]
		case strings.HasPrefix(w, "-c"):
			arg, shown = w[2:], w
		case strings.HasPrefix(w, "--") && len(w) > 2:
			arg, shown = w[2:], w
		default:
			return nil, fmt.Errorf("unsupported start-up option %s in \"options\": only -c name=value and --name=value are supported by querycop", quoteName(w))
		}
		name, value, ok := strings.Cut(arg, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("start-up option %s in \"options\" requires name=value", quoteName(shown))
		}
		// As ParseLongOption does, so --search-path=x sets search_path.
		name = strings.ReplaceAll(name, "-", "_")
		settings = append(settings, startupSetting{name, value})
	}
	return settings, nil
}

// splitOptions splits at unescaped whitespace; a backslash makes the next
// byte literal (pg_split_opts, with C-locale isspace).
func splitOptions(s string) []string {
	var words []string
	var w strings.Builder
	inWord, escaped := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			w.WriteByte(c)
			escaped = false
		case c == '\\':
			inWord, escaped = true, true
		case strings.IndexByte(" \t\n\v\f\r", c) >= 0:
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// setQuery builds one simple-protocol query applying every setting, so a
// session costs a single round trip before the client's first query. It
// returns "" when there is nothing to set.
func setQuery(settings []startupSetting) string {
	if len(settings) == 0 {
		return ""
	}
	return setConfigQuery(settings, false)
}

// setConfigQuery is one SELECT of set_config for every setting, for the
// session or (local) the current statement only.
func setConfigQuery(settings []startupSetting, local bool) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i, s := range settings {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("pg_catalog.set_config(")
		b.WriteString(quoteE(s.name))
		b.WriteString(", ")
		b.WriteString(quoteE(s.value))
		if local {
			b.WriteString(", true)")
		} else {
			b.WriteString(", false)")
		}
	}
	return b.String()
}

// quoteE quotes s as an E'...' literal: backslashes are escapes there whatever
// standard_conforming_strings says, so doubling them and the quotes is
// always right. Start-up strings cannot hold NUL bytes.
func quoteE(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'"
}
