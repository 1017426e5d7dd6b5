package wire

import (
	"testing"
	"time"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
)

type fakeLease struct{ id int }

func (*fakeLease) Conn() *backend.Conn          { return nil }
func (*fakeLease) Release(st pool.ReleaseState) {}

// A cancel counts only for the lease it was meant for; a backend whose
// cancel was not confirmed is not to be lent again, and that verdict is
// for that backend only.
func TestAttachedLeaseHoldsBackBackendsWithCancelsOnTheirWay(t *testing.T) {
	var a attachedLease
	first, second := &fakeLease{1}, &fakeLease{2}
	a.Store(first)
	if a.beginCancel(second) {
		t.Fatal("a cancel for a lease the session no longer holds was counted")
	}
	if !a.beginCancel(first) {
		t.Fatal("a cancel for the attached lease was not counted")
	}
	a.Store(nil)
	released := make(chan bool, 1)
	go func() { released <- a.awaitCancels() }()
	time.Sleep(50 * time.Millisecond)
	select {
	case <-released:
		t.Fatal("the backend was released while a cancel to it was on its way")
	default:
	}
	a.endCancel(false)
	if reusable := <-released; reusable {
		t.Fatal("a backend with an unconfirmed cancel was reported reusable")
	}
	a.Store(second)
	if !a.beginCancel(second) {
		t.Fatal("a cancel for the new lease was not counted")
	}
	a.endCancel(true)
	a.Store(nil)
	if !a.awaitCancels() {
		t.Fatal("a backend whose cancel was confirmed was reported not reusable")
	}
}
