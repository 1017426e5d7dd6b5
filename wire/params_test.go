package wire

import (
	"slices"
	"strings"
	"testing"
)

func TestClientSettings(t *testing.T) {
	type s = startupSetting
	tests := []struct {
		name    string
		params  map[string]string
		want    []startupSetting
		wantErr string // substring of the error; "" means success
	}{
		{
			name: "plain parameters sorted, user and database skipped",
			params: map[string]string{"user": "u", "database": "d",
				"application_name": "app", "TimeZone": "UTC", "DateStyle": "ISO, MDY"},
			want: []s{{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"application_name", "app"}},
		},
		{
			name:   "nothing to set",
			params: map[string]string{"user": "u", "options": " \t "},
		},
		{
			name:   "options -c separate word",
			params: map[string]string{"options": "-c statement_timeout=5s"},
			want:   []s{{"statement_timeout", "5s"}},
		},
		{
			name:   "options -c joined",
			params: map[string]string{"options": "-cstatement_timeout=5s"},
			want:   []s{{"statement_timeout", "5s"}},
		},
		{
			name:   "options --name=value turns dashes into underscores",
			params: map[string]string{"options": "--search-path=a,b"},
			want:   []s{{"search_path", "a,b"}},
		},
		{
			name:   "options escaped space and backslash",
			params: map[string]string{"options": `-c search_path=my\ schema -c x.y=a\\b`},
			want:   []s{{"search_path", "my schema"}, {"x.y", `a\b`}},
		},
		{
			name:   "several -c keep their order and come before plain parameters",
			params: map[string]string{"options": "  -c work_mem=4MB\t-cjit=off  --lock-timeout=1s ", "application_name": "a"},
			want:   []s{{"work_mem", "4MB"}, {"jit", "off"}, {"lock_timeout", "1s"}, {"application_name", "a"}},
		},
		{
			name:   "later -c of the same name wins",
			params: map[string]string{"options": "-c work_mem=1MB -c WORK_MEM=2MB"},
			want:   []s{{"WORK_MEM", "2MB"}},
		},
		{
			name:   "plain parameter overrides -c of the same name in another case",
			params: map[string]string{"options": "-c TimeZone=UTC", "timezone": "Europe/Paris"},
			want:   []s{{"timezone", "Europe/Paris"}},
		},
		{
			name:   "plain duplicates differing in case: last in sort order wins",
			params: map[string]string{"TimeZone": "UTC", "timezone": "Asia/Tokyo"},
			want:   []s{{"timezone", "Asia/Tokyo"}},
		},
		{
			name:   "replication=false accepted and not applied",
			params: map[string]string{"replication": "false", "application_name": "a"},
			want:   []s{{"application_name", "a"}},
		},
		{
			name:   "replication=OFF accepted",
			params: map[string]string{"replication": "OFF"},
		},
		{name: "replication=true refused", params: map[string]string{"replication": "true"}, wantErr: `"replication"`},
		{name: "replication=database refused", params: map[string]string{"replication": "database"}, wantErr: `"replication"`},
		{name: "-d refused", params: map[string]string{"options": "-d 5"}, wantErr: `unsupported start-up option "-d" in "options"`},
		{name: "-e refused", params: map[string]string{"options": "-c a=b -e"}, wantErr: `"-e"`},
		{name: "-o refused", params: map[string]string{"options": "-o x"}, wantErr: `"-o"`},
		{name: "bare word refused", params: map[string]string{"options": "statement_timeout=5s"}, wantErr: `"statement_timeout=5s"`},
		{name: "bare -- refused", params: map[string]string{"options": "--"}, wantErr: `"--"`},
		{name: "-c without value", params: map[string]string{"options": "-c work_mem"}, wantErr: `"-c work_mem" in "options" requires name=value`},
		{name: "-c at the end", params: map[string]string{"options": "-c"}, wantErr: `"-c" in "options" requires`},
		{name: "--name without value", params: map[string]string{"options": "--work-mem"}, wantErr: `"--work-mem"`},
		{name: "-c with empty name", params: map[string]string{"options": "-c =x"}, wantErr: `"-c =x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := clientSettings(tt.params)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSetQuery(t *testing.T) {
	tests := []struct {
		name     string
		settings []startupSetting
		want     string
	}{
		{"empty", nil, ""},
		{"one", []startupSetting{{"application_name", "app"}},
			`SELECT pg_catalog.set_config(E'application_name', E'app', false)`},
		{"quote, backslash and unicode", []startupSetting{{"search_path", `o'brien\x`}, {"application_name", "café ☕"}},
			`SELECT pg_catalog.set_config(E'search_path', E'o''brien\\x', false), ` +
				`pg_catalog.set_config(E'application_name', E'café ☕', false)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := setQuery(tt.settings); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}
