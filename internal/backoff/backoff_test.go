package backoff

import (
	"context"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}
	tests := []struct {
		name    string
		attempt int
		j       float64
		want    time.Duration
	}{
		{"first retry, no jitter: half the base", 1, 0, 50 * time.Millisecond},
		{"first retry, most jitter: just under the base", 1, 0.999, 99_950 * time.Microsecond},
		{"doubles", 3, 0, 200 * time.Millisecond},
		{"capped", 10, 0, 2500 * time.Millisecond},
		{"huge attempt stays capped", 1000, 0.5, 3750 * time.Millisecond},
		{"attempt below 1 is the first", 0, 0, 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Delay(tc.attempt, tc.j); got != tc.want {
				t.Errorf("Delay(%d, %v) = %v, want %v", tc.attempt, tc.j, got, tc.want)
			}
		})
	}
	if got := (Policy{Base: time.Second}).Step(5); got != time.Second {
		t.Errorf("a policy without Max is a fixed poll: Step(5) = %v, want 1s", got)
	}
	for range 100 {
		if d := p.Next(2); d < 100*time.Millisecond || d >= 200*time.Millisecond {
			t.Fatalf("Next(2) = %v, want within [100ms, 200ms)", d)
		}
		if d := Spread(time.Second); d < 750*time.Millisecond || d > 1250*time.Millisecond {
			t.Fatalf("Spread(1s) = %v, want within ±25%%", d)
		}
	}
}

func TestSleepEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := Sleep(ctx, time.Minute); err != context.DeadlineExceeded {
		t.Errorf("Sleep past the deadline = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Sleep outlived its context by %v", took)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep(1ms) = %v, want nil", err)
	}
}
