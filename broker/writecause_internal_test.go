package broker

import (
	"testing"
	"time"
)

func TestPausesDoubleWithinTheirUpperHalfAndStopAtASecond(t *testing.T) {
	for n := 1; n <= 64; n++ {
		want := maxPause
		if n <= 10 {
			want = min(conflictPause<<(n-1), maxPause)
		}
		for range 50 {
			if p := pause(conflictPause, n); p < want/2 || p > want {
				t.Fatalf("pause after %d conflicts = %v, want %v to %v", n, p, want/2, want)
			}
		}
	}
	if p := pause(failurePause, 1); p < 25*time.Millisecond || p > 50*time.Millisecond {
		t.Errorf("first pause after a failure = %v, want 25ms to 50ms", p)
	}
}
