package store

import (
	"errors"
	"time"
)

// ErrFenced is a reconciler write refused because the instance that made
// it no longer holds the leader lease at the term it was given: another
// instance took over while this one was paused or cut off. The instance
// must stop acting as leader at once.
var ErrFenced = errors.New("fenced: this instance no longer holds the leader lease")

// LeaderLease names the one lease the control-plane instances compete for.
const LeaderLease = "leader"

// Lease is the leader lease as stored. Its times are the database's clock,
// so that the instances' own clocks never decide who leads.
type Lease struct {
	Holder     string    // the instance ID that holds (or last held) it
	Term       int64     // incremented on every takeover; 0: never held
	AcquiredAt time.Time // when Term began
	Expires    time.Time // the holder leads until then unless it renews
	// Held: the instance that asked holds the lease now (Acquire's answer).
	Held bool
	// Valid: Expires is still ahead by the database's clock.
	Valid bool
}

// Instance is one control-plane process sharing the store.
type Instance struct {
	ID       string
	Address  string // where its API listens
	Version  string
	Started  time.Time
	LastSeen time.Time // by the database's clock
}

// ControlPlane is every instance seen lately and the leader lease.
type ControlPlane struct {
	Lease     Lease
	Instances []Instance
}
