package standin

import "sync"

// Statuses counts the status each client got, by router. The zero value is
// empty and ready; a nil *Statuses counts nothing. It is safe for
// concurrent use.
type Statuses struct {
	mu sync.Mutex
	n  map[string]map[int]int
}

// Add counts one call of router that the client got status for.
func (s *Statuses) Add(router string, status int) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]map[int]int{}
	}
	if s.n[router] == nil {
		s.n[router] = map[int]int{}
	}
	s.n[router][status]++
}

// Count is how many calls of router got status; router "" counts every
// router's, and status 0 every status.
func (s *Statuses) Count(router string, status int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for r, byStatus := range s.n {
		if router != "" && r != router {
			continue
		}
		for st, c := range byStatus {
			if status == 0 || st == status {
				n += c
			}
		}
	}
	return n
}

// Calls is how many calls each router got.
func (s *Statuses) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for r, byStatus := range s.n {
		for _, c := range byStatus {
			out[r] += c
		}
	}
	return out
}
