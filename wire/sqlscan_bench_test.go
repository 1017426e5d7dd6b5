package wire

import "testing"

// BenchmarkAnalyzeQuery is the cost transaction mode adds to each simple
// Query and Parse to find what the statement does to the session.
func BenchmarkAnalyzeQuery(b *testing.B) {
	for _, q := range []struct{ name, sql string }{
		{"pgbench-select", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"},
		{"pgbench-update", "UPDATE pgbench_accounts SET abalance = abalance + -2435 WHERE aid = 6321;"},
		{"set", "SET application_name = 'worker-7'"},
	} {
		b.Run(q.name, func(b *testing.B) {
			b.ReportAllocs()
			var sc sqlScanner
			for i := 0; i < b.N; i++ {
				_ = analyzeQuery(&sc, q.sql, true)
			}
		})
	}
}
