package secrets

import (
	"strings"
	"testing"
)

func TestParseRef(t *testing.T) {
	tests := []struct {
		name, in string
		want     Ref
		wantErr  string
	}{
		{name: "plain id", in: "Redash/RDS/Password", want: Ref{Name: "n", SecretID: "Redash/RDS/Password"}},
		{name: "ARN with key", in: "arn:aws:secretsmanager:us-east-1:1:secret:rds!db-1a2b#password",
			want: Ref{Name: "n", SecretID: "arn:aws:secretsmanager:us-east-1:1:secret:rds!db-1a2b", JSONKey: "password"}},
		{name: "spaces trimmed", in: "  Redash/X#k ", want: Ref{Name: "n", SecretID: "Redash/X", JSONKey: "k"}},
		{name: "empty", in: "", wantErr: "empty secret id"},
		{name: "only key", in: "#k", wantErr: "empty secret id"},
		{name: "dangling hash", in: "Redash/X#", wantErr: "no JSON key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRef("n", tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
			if rt, _ := ParseRef("n", got.String()); rt != got {
				t.Errorf("String() %q does not round-trip", got.String())
			}
		})
	}
}
