package config

import "time"

// Rollout is how serve announces its KEKs to the other replicas and
// waits for them (broker.RolloutConfig), and what keybroker rewrap and
// kek status read of it.
type Rollout struct {
	// Heartbeat is how often a replica renews its announcement; 0: it
	// announces nothing and waits for nobody.
	Heartbeat time.Duration
	// Replicas is how many replicas must announce before a newly
	// configured KEK is used; 0: only those that announce count.
	Replicas int
}
