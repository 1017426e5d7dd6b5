package main

import (
	"testing"

	"github.com/querycop/querycop/internal/pgtest"
)

// cluster is the throwaway PostgreSQL the lifecycle tests put the real
// binary in front of; nil (and those tests skipped) when PostgreSQL is not
// installed outside CI.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{TLS: true}, &cluster)
}
