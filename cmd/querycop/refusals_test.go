package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// sec7Items returns the numbered list "Start-up refuses:" of
// configuration.md §7, by number, and the whole section.
func sec7Items(t *testing.T) (map[int]string, string) {
	t.Helper()
	data, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i := strings.Index(doc, "\n## 7. Start-up checks")
	if i < 0 {
		t.Fatal("configuration.md has no §7")
	}
	sec := doc[i:]
	if j := strings.Index(sec[1:], "\n## "); j >= 0 {
		sec = sec[:j+1]
	}
	start := strings.Index(sec, "Start-up refuses:")
	if start < 0 {
		t.Fatal("§7 has no \"Start-up refuses:\" list")
	}
	items := map[int]string{}
	item := regexp.MustCompile(`(?m)^(\d+)\. `)
	list := sec[start:]
	if end := strings.Index(list, "\n\nA variable that did not parse"); end >= 0 {
		list = list[:end]
	}
	locs := item.FindAllStringSubmatchIndex(list, -1)
	for k, loc := range locs {
		n, _ := strconv.Atoi(list[loc[2]:loc[3]])
		end := len(list)
		if k+1 < len(locs) {
			end = locs[k+1][0]
		}
		items[n] = list[loc[0]:end]
	}
	if len(items) == 0 {
		t.Fatal("§7's list has no items")
	}
	return items, sec
}

// TestStartupRefusalsDocumented keeps configuration.md §7 and the code in
// step: each case below is a configuration start-up must refuse, under the
// item of §7 that says so, naming the variable the problem names. Every
// item has at least one case, and every GATEKEEPER_ variable that the
// validation code names is named in §7.
func TestStartupRefusalsDocumented(t *testing.T) {
	items, sec := sec7Items(t)

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notPEM := write("not-pem", "hello\n")
	md5File := write("md5-users", `"app" "md5`+strings.Repeat("0", 32)+`"`+"\n")
	cases := []struct {
		item int
		env  []string
		want string // the variable the problem names
	}{
		{1, []string{"GATEKEEPER_BACKEND_PORT=abc"}, "GATEKEEPER_BACKEND_PORT"},
		{1, []string{"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=10"}, "GATEKEEPER_BACKEND_CONNECT_TIMEOUT"},
		{1, []string{"GATEKEEPER_BACKEND_TOKEN_REUSE=yes"}, "GATEKEEPER_BACKEND_TOKEN_REUSE"},
		{1, []string{"GATEKEEPER_BACKEND_TLS_MODE=strict"}, "GATEKEEPER_BACKEND_TLS_MODE"},
		{1, []string{"GATEKEEPER_CLIENT_TLS=always"}, "GATEKEEPER_CLIENT_TLS"},
		{1, []string{"GATEKEEPER_POOL_MODE=statement"}, "GATEKEEPER_POOL_MODE"},
		{2, []string{"GATEKEEPER_BACKEND_HOST=   "}, "GATEKEEPER_BACKEND_HOST"},
		{3, []string{"GATEKEEPER_BACKEND_PORT=70000"}, "GATEKEEPER_BACKEND_PORT"},
		{3, []string{"GATEKEEPER_LISTEN_PORT=0"}, "GATEKEEPER_LISTEN_PORT"},
		{3, []string{"GATEKEEPER_API_PORT=65536"}, "GATEKEEPER_API_PORT"},
		{4, []string{"GATEKEEPER_LISTEN_PORT=7000", "GATEKEEPER_API_PORT=7000"}, "GATEKEEPER_API_PORT"},
		{5, []string{"GATEKEEPER_BACKEND_CONNECT_TIMEOUT=0s"}, "GATEKEEPER_BACKEND_CONNECT_TIMEOUT"},
		{5, []string{"GATEKEEPER_BACKEND_TOKEN_TIMEOUT=-1s"}, "GATEKEEPER_BACKEND_TOKEN_TIMEOUT"},
		{5, []string{"GATEKEEPER_BACKEND_TOKEN_LIFETIME=0s"}, "GATEKEEPER_BACKEND_TOKEN_LIFETIME"},
		{5, []string{"GATEKEEPER_CLIENT_LOGIN_TIMEOUT=0s"}, "GATEKEEPER_CLIENT_LOGIN_TIMEOUT"},
		{5, []string{"GATEKEEPER_POOL_MAX_CONN_LIFETIME=0s"}, "GATEKEEPER_POOL_MAX_CONN_LIFETIME"},
		{5, []string{"GATEKEEPER_POOL_MAX_CONN_IDLE_TIME=-1m"}, "GATEKEEPER_POOL_MAX_CONN_IDLE_TIME"},
		{5, []string{"GATEKEEPER_POOL_ACQUIRE_TIMEOUT=0s"}, "GATEKEEPER_POOL_ACQUIRE_TIMEOUT"},
		{5, []string{"GATEKEEPER_SHUTDOWN_TIMEOUT=0s"}, "GATEKEEPER_SHUTDOWN_TIMEOUT"},
		{5, []string{"GATEKEEPER_POOL_AUTH_CACHE_TTL=-1s"}, "GATEKEEPER_POOL_AUTH_CACHE_TTL"},
		{5, []string{"GATEKEEPER_AUTH_QUERY_CACHE_TTL=-1s"}, "GATEKEEPER_AUTH_QUERY_CACHE_TTL"},
		{5, []string{"GATEKEEPER_CLIENT_IDLE_TIMEOUT=-1s"}, "GATEKEEPER_CLIENT_IDLE_TIMEOUT"},
		{5, []string{"GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT=-1s"}, "GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT"},
		{5, []string{"GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN=15m"}, "GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN"},
		{5, []string{"GATEKEEPER_BACKEND_TOKEN_CMD=echo t", "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_LIFETIME=40s", "GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN=10s"}, "GATEKEEPER_BACKEND_TOKEN_LIFETIME"},
		{6, []string{"GATEKEEPER_BACKEND_TLS_MODE=verify-full"}, "GATEKEEPER_BACKEND_TLS_CA_FILE"},
		{7, []string{"GATEKEEPER_BACKEND_TLS_CA_FILE=" + filepath.Join(dir, "missing.pem")}, "GATEKEEPER_BACKEND_TLS_CA_FILE"},
		{7, []string{"GATEKEEPER_BACKEND_TLS_CA_FILE=" + notPEM}, "GATEKEEPER_BACKEND_TLS_CA_FILE"},
		{8, []string{"GATEKEEPER_BACKEND_TOKEN_CMD=echo t"}, "GATEKEEPER_BACKEND_TOKEN_CMD"},
		{8, []string{"GATEKEEPER_BACKEND_TOKEN_CMD=  ", "GATEKEEPER_BACKEND_TLS_MODE=require"}, "GATEKEEPER_BACKEND_TOKEN_CMD"},
		{9, []string{"GATEKEEPER_PROXY_TLS_CERT=" + notPEM}, "GATEKEEPER_PROXY_TLS_KEY"},
		{9, []string{"GATEKEEPER_PROXY_TLS_CERT=" + notPEM, "GATEKEEPER_PROXY_TLS_KEY=" + notPEM}, "GATEKEEPER_PROXY_TLS_CERT"},
		{9, []string{"GATEKEEPER_CLIENT_TLS=require"}, "GATEKEEPER_CLIENT_TLS"},
		{9, []string{"GATEKEEPER_PROXY_TLS_CLIENT_CA=" + notPEM}, "GATEKEEPER_PROXY_TLS_CLIENT_CA"},
		{10, []string{"GATEKEEPER_LOG_LEVEL=fatal"}, "GATEKEEPER_LOG_LEVEL"},
		{10, []string{"GATEKEEPER_LOG_FORMAT=xml"}, "GATEKEEPER_LOG_FORMAT"},
		{11, []string{"GATEKEEPER_MAX_CLIENT_CONN=0"}, "GATEKEEPER_MAX_CLIENT_CONN"},
		{11, []string{"GATEKEEPER_POOL_SIZE=0"}, "GATEKEEPER_POOL_SIZE"},
		{11, []string{"GATEKEEPER_POOL_MIN_IDLE=21"}, "GATEKEEPER_POOL_MIN_IDLE"},
		{11, []string{"GATEKEEPER_POOL_LIFETIME_JITTER=-1s"}, "GATEKEEPER_POOL_LIFETIME_JITTER"},
		{11, []string{"GATEKEEPER_MAX_MESSAGE_SIZE=1023"}, "GATEKEEPER_MAX_MESSAGE_SIZE"},
		{11, []string{"GATEKEEPER_MAX_PREPARED_STATEMENTS=0"}, "GATEKEEPER_MAX_PREPARED_STATEMENTS"},
		{12, []string{"GATEKEEPER_CLIENT_AUTH_FILE=" + filepath.Join(dir, "missing.txt")}, "GATEKEEPER_CLIENT_AUTH_FILE"},
		{12, []string{"GATEKEEPER_CLIENT_AUTH_FILE=" + md5File}, "GATEKEEPER_CLIENT_AUTH_FILE"},
		{12, []string{"GATEKEEPER_AUTH_USER=pgbouncer"}, "GATEKEEPER_AUTH_USER"},
		{12, []string{"GATEKEEPER_AUTH_USER=pgbouncer", "GATEKEEPER_AUTH_PASSWORD=x", "GATEKEEPER_AUTH_QUERY=select 1"}, "GATEKEEPER_AUTH_QUERY"},
		{13, []string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=oracle"}, "GATEKEEPER_BACKEND_TOKEN_PROVIDER"},
		{13, []string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure", "GATEKEEPER_BACKEND_TOKEN_CMD=echo t", "GATEKEEPER_BACKEND_TLS_MODE=require"}, "GATEKEEPER_BACKEND_TOKEN_PROVIDER"},
		{13, []string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure"}, "GATEKEEPER_BACKEND_TOKEN_PROVIDER"},
		{13, []string{"GATEKEEPER_BACKEND_TOKEN_PROVIDER=aws-rds", "GATEKEEPER_BACKEND_TLS_MODE=require", "GATEKEEPER_BACKEND_TOKEN_AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000000"}, "GATEKEEPER_BACKEND_TOKEN_AZURE_CLIENT_ID"},
		{14, []string{"GATEKEEPER_ADMIN_USERS=ops,,ci"}, "GATEKEEPER_ADMIN_USERS"},
		{14, []string{"GATEKEEPER_ADMIN_USERS=ops", "GATEKEEPER_BACKEND_TOKEN_CMD=echo t", "GATEKEEPER_BACKEND_TLS_MODE=require"}, "GATEKEEPER_ADMIN_USERS"},
		{14, []string{"GATEKEEPER_ADMIN_USERS=ops", "GATEKEEPER_BACKEND_TOKEN_PROVIDER=gcp", "GATEKEEPER_BACKEND_TLS_MODE=require"}, "GATEKEEPER_ADMIN_USERS"},
	}
	covered := map[int]bool{}
	for _, tc := range cases {
		env := append(append([]string{}, tc.env...), "GATEKEEPER_BACKEND_HOST=db.example.com")
		_, err := LoadConfig(env)
		if err == nil {
			t.Errorf("§7 item %d: %v was accepted", tc.item, tc.env)
			continue
		}
		found := false
		for _, p := range flatten(err) {
			vp, ok := p.(interface{ EnvVars() []string })
			if (ok && strings.Contains(strings.Join(vp.EnvVars(), " "), tc.want)) || strings.HasPrefix(p.Error(), tc.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("§7 item %d: %v was refused, but no problem names %s:\n%v", tc.item, tc.env, tc.want, err)
		}
		text, ok := items[tc.item]
		switch {
		case !ok:
			t.Errorf("§7 has no item %d (for %v)", tc.item, tc.env)
		case tc.item == 1 && !strings.Contains(tc.env[0], "_MODE=") && !strings.Contains(tc.env[0], "_TLS="):
			// A value of the wrong type: item 1 names the kinds, not
			// every variable. Closed sets are named.
		case !strings.Contains(text, tc.want):
			t.Errorf("§7 item %d does not name %s, which it refuses:\n%s", tc.item, tc.want, text)
		}
		covered[tc.item] = true
	}
	for n := range items {
		if !covered[n] {
			t.Errorf("§7 item %d has no case here: add one that start-up refuses, or drop the item", n)
		}
	}

	// Every variable the validation code names is named in §7.
	files, _ := filepath.Glob("../../*/validate.go")
	files = append(files, "../../token/provider.go", "config.go")
	named := regexp.MustCompile(`"(GATEKEEPER_[A-Z0-9_]+)"|envPrefix \+ "([A-Z0-9_]+)"`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range named.FindAllStringSubmatch(string(data), -1) {
			v := m[1]
			if v == "" {
				v = "GATEKEEPER_" + m[2]
			}
			if unreachableRefusals[v] != "" {
				continue
			}
			if !strings.Contains(sec, v) {
				t.Errorf("%s refuses something about %s, which configuration.md §7 does not name", f, v)
			}
		}
	}
	for v, why := range unreachableRefusals {
		if _, err := LoadConfig([]string{v + "=", "GATEKEEPER_BACKEND_HOST=db.example.com"}); err != nil {
			t.Errorf("%s= is refused (%v), but the test takes its rule for unreachable: %s", v, err, why)
		}
	}
}

// unreachableRefusals are variables whose Validate rule cannot be reached
// from the environment, so §7 does not list it.
var unreachableRefusals = map[string]string{
	"GATEKEEPER_POOL_RESET_QUERY": "empty counts as unset, so the default DISCARD ALL applies",
	"GATEKEEPER_AUTH_DBNAME":      "empty counts as unset, so the default postgres applies",
}
