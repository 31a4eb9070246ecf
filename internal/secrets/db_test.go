package secrets

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseDBSecret(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    DBCredentials // Password compared via Reveal
		wantPW  string
		wantErr []string
	}{
		{name: "rotation shape, port as number",
			json: `{"engine":"postgres","username":"redash","password":"Pw-Secret-1","host":"db.x.rds.amazonaws.com","port":5432,"dbname":"redash","dbClusterIdentifier":"c"}`,
			want: DBCredentials{Username: "redash", Host: "db.x.rds.amazonaws.com", Port: 5432, DBName: "redash"}, wantPW: "Pw-Secret-1"},
		{name: "port as string",
			json: `{"username":"u","password":"Pw-Secret-1","host":"h","port":"6432","dbname":"d"}`,
			want: DBCredentials{Username: "u", Host: "h", Port: 6432, DBName: "d"}, wantPW: "Pw-Secret-1"},
		{name: "RDS-managed master secret: only username and password",
			json: `{"username":"postgres","password":"Pw-Secret-1"}`,
			want: DBCredentials{Username: "postgres"}, wantPW: "Pw-Secret-1"},
		{name: "missing password and bad port in one message",
			json:    `{"username":"u","port":"Pw-Secret-1"}`,
			wantErr: []string{`key "password" is missing`, `key "port" is not a number from 1 to 65535`, "tag redash:db-secret"}},
		{name: "port out of range", json: `{"username":"u","password":"Pw-Secret-1","port":70000}`,
			wantErr: []string{`key "port" is not a number`}},
		{name: "username not a string", json: `{"username":5,"password":"Pw-Secret-1"}`,
			wantErr: []string{`key "username" is not a string`}},
		{name: "empty username", json: `{"username":"","password":"Pw-Secret-1"}`,
			wantErr: []string{`key "username" is empty`}},
		{name: "whitespace-only password", json: `{"username":"u","password":" \n "}`,
			wantErr: []string{`key "password" holds only whitespace`, "tag redash:db-secret"}},
		{name: "whitespace-only username", json: `{"username":"\t","password":"Pw-Secret-1"}`,
			wantErr: []string{`key "username" holds only whitespace`}},
		{name: "not JSON", json: `Pw-Secret-1`,
			wantErr: []string{`secret "db-secret" (id "Redash/DB") is not a JSON object`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Secret{Ref: Ref{Name: DBSecret, SecretID: "Redash/DB"}, Value: NewValue(tc.json), VersionID: "v"}
			got, err := ParseDBSecret(s)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\ndoes not contain %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "Pw-Secret") {
					t.Errorf("error leaks the secret: %q", err)
				}
				if !isConfigError(err) {
					t.Errorf("isConfigError = false")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Password.Reveal() != tc.wantPW {
				t.Errorf("password = %q, want %q", got.Password.Reveal(), tc.wantPW)
			}
			got.Password = Value{}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDBCredentialsPrintRedacted(t *testing.T) {
	c, err := ParseDBSecret(Secret{Value: NewValue(`{"username":"u","password":"Pw-Secret-1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c)} {
		if strings.Contains(out, "Pw-Secret") || !strings.Contains(out, "[redacted]") {
			t.Errorf("printed credentials: %s", out)
		}
	}
}
