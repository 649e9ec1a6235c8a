package broker

// PendingFetches is how many fetches wait for a group commit slot.
func (s *Service) PendingFetches() int {
	s.fetches.mu.Lock()
	defer s.fetches.mu.Unlock()
	return len(s.fetches.pending)
}

// The readiness rules of a KEK in cached envelope mode, for their tests.
var (
	CachedKEKProbe = cachedKEKProbe
	BoundedStatus  = boundedStatus
	ThrottleProbe  = throttleProbe
)
