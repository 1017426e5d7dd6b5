// Package pgtest starts a throwaway PostgreSQL cluster for integration tests.
//
// A test package starts one cluster per test process from TestMain with
// [Main]; tests then get it with [Require]. The cluster has a fixed set of
// roles (one per authentication method, see the User* constants), a database
// [Database], and optionally TLS with certificates from a generated [CA].
// Everything lives in a temporary directory that is removed when the test
// process ends, even if it crashes.
package pgtest
