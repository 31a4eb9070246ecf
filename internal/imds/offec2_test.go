package imds

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRefusedEndpointHintsLocalProviderEarly: off EC2 nothing answers at the
// metadata address. The first refused attempt logs, once, that no metadata
// service answers and how to run without one, while the retries go on for
// the whole deadline (a slow IMDS at boot is normal).
func TestRefusedEndpointHintsLocalProviderEarly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there any more: connection refused

	var logs syncBuffer
	c := newTestClient(endpoint, 2*time.Second, &logs)
	_, err = c.Instance(context.Background())
	if err == nil {
		t.Fatal("Instance succeeded against a refusing endpoint")
	}
	out := logs.String()
	if n := countLines(out, "IMDS request failed; retrying"); n < 4 {
		t.Errorf("%d retries logged: the hint must not end the retries before the deadline:\n%s", n, out)
	}
	if n := countLines(out, "no EC2 instance metadata service answers at "+endpoint); n != 1 {
		t.Errorf("hint logged %d times, want once:\n%s", n, out)
	}
	first := strings.SplitN(out, "\n", 2)[0]
	if !strings.Contains(first, "no EC2 instance metadata service answers") || !strings.Contains(first, "--provider local") ||
		!strings.Contains(first, "provider: local") {
		t.Errorf("first log line is not the off-EC2 hint with both ways to run locally:\n%s", first)
	}
	if !strings.Contains(err.Error(), "--provider local") {
		t.Errorf("final error lacks the off-EC2 hint: %v", err)
	}
}
