package agent

import (
	"testing"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/doctor"
)

// The rule: record vs AWSCURRENT vs AWSPREVIOUS -> action, without I/O.
func TestDecideKey(t *testing.T) {
	const sk, ck = cluster.RecSecretKey, cluster.RecCookieSecret
	for _, c := range []struct {
		name, rec, cur, prev string
		reenc                bool
		want                 keyAction
	}{
		{sk, "", "A", "", true, keyRecord},
		{sk, "", "A", "B", false, keyRecord},
		{sk, "A", "A", "", true, keyKeep},
		{sk, "A", "A", "B", false, keyKeep},
		{sk, "A", "B", "A", true, keyRotate},
		{sk, "A", "B", "A", false, keyRefuseNoReencrypt},
		{sk, "A", "C", "B", true, keyUnknown},  // rotated twice
		{sk, "A", "B", "", true, keyUnknown},   // no AWSPREVIOUS
		{sk, "A", "C", "B", false, keyUnknown}, // 8.x, unknown value
		{ck, "", "A", "", true, keyRecord},
		{ck, "A", "A", "", true, keyKeep},
		{ck, "A", "B", "", false, keyFollow},
		{ck, "A", "C", "B", true, keyFollow},
	} {
		if got := decideKey(c.name, c.rec, c.cur, c.prev, c.reenc); got != c.want {
			t.Errorf("%s: record %q current %q previous %q reencrypt %v: got %s, want %s", c.name, c.rec, c.cur, c.prev, c.reenc, got, c.want)
		}
	}
}

func TestCanReencrypt(t *testing.T) {
	for v, want := range map[string]bool{"8.0.0.b32245": false, "9.0.0-beta": true, "10.1.0.b50633": true, "25.1.0": true, "26.3.0": true} {
		f, err := compose.FamilyFor(v)
		if err != nil {
			t.Fatal(err)
		}
		if canReencrypt(f) != want {
			t.Errorf("%s: canReencrypt %v, want %v", v, !want, want)
		}
	}
}

func TestCheckKeys(t *testing.T) {
	a := &Agent{}
	aws := config.Config{Provider: config.ProviderAWS}
	for _, c := range []struct {
		v    keyView
		want doctor.Status
	}{
		{keyView{}, doctor.Warn},
		{keyView{checked: true}, doctor.OK},
		{keyView{checked: true, secretKey: keyRecord, cookie: keyRecord}, doctor.OK},
		{keyView{checked: true, secretKey: keyRotate}, doctor.Warn},
		{keyView{checked: true, secretKey: keyRefuseNoReencrypt, note: "refused"}, doctor.Warn},
		{keyView{checked: true, secretKey: keyUnknown, note: "refusing"}, doctor.Fail},
		{keyView{checked: true, cookie: keyFollow}, doctor.Warn},
	} {
		if got := a.checkKeys(Rendered{Config: aws, keys: c.v}); got.Status != c.want {
			t.Errorf("%+v: %s (%s), want %s", c.v, got.Status, got.Detail, c.want)
		}
	}
	if got := a.checkKeys(Rendered{Config: config.Config{Provider: config.ProviderLocal}}); got.Status != doctor.OK {
		t.Errorf("provider local: %s", got.Status)
	}
}
