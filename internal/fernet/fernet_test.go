package fernet

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The spec's generate.json / verify.json vector (github.com/fernet/spec).
const (
	specSecret = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
	specToken  = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA=="
)

func TestSpecVector(t *testing.T) {
	k, err := ParseKey(specSecret)
	if err != nil {
		t.Fatal(err)
	}
	now, _ := time.Parse(time.RFC3339, "1985-10-26T01:20:00-07:00")
	iv := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	if got := k.encryptWith([]byte("hello"), now, iv); got != specToken {
		t.Errorf("encrypt: got %s, want %s", got, specToken)
	}
	pt, err := k.Decrypt(specToken)
	if err != nil || string(pt) != "hello" {
		t.Errorf("decrypt: %q, %v", pt, err)
	}
}

func TestRejects(t *testing.T) {
	k := KeyFromSecret("old")
	tok := k.Encrypt([]byte(`{"password": "x"}`), time.Now())
	if _, err := KeyFromSecret("new").Decrypt(tok); err != ErrInvalidToken {
		t.Errorf("another key decrypted the token: %v", err)
	}
	flipped := []byte(tok)
	flipped[20] ^= 1
	for _, bad := range []string{"", "not base64!", string(flipped), tok[:40]} {
		if _, err := k.Decrypt(bad); err == nil {
			t.Errorf("decrypted a bad token %q", bad)
		}
	}
}

// TestMatchesSQLAlchemyUtils checks both directions against the Python
// cryptography package and FernetEngine's key derivation, when installed.
func TestMatchesSQLAlchemyUtils(t *testing.T) {
	py := `import base64, hashlib, sys
from cryptography.fernet import Fernet
f = Fernet(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()))
if sys.argv[2] == "enc":
    print(f.encrypt(sys.argv[3].encode()).decode())
else:
    print(f.decrypt(sys.argv[3].encode()).decode())
`
	if err := exec.Command("python3", "-c", "import cryptography").Run(); err != nil {
		t.Skip("python3 with the cryptography package is not installed (pip install cryptography; moto_server brings it), so only the spec vector checks the format")
	}
	const secret, plain = "a-redash-secret-key", `{"host": "db", "password": "p"}`
	out, err := exec.Command("python3", "-c", py, secret, "enc", plain).Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := KeyFromSecret(secret).Decrypt(strings.TrimSpace(string(out)))
	if err != nil || string(got) != plain {
		t.Errorf("decrypting Python's token: %q, %v", got, err)
	}
	tok := KeyFromSecret(secret).Encrypt([]byte(plain), time.Now())
	out, err = exec.Command("python3", "-c", py, secret, "dec", tok).Output()
	if err != nil || !bytes.Equal(bytes.TrimSpace(out), []byte(plain)) {
		t.Errorf("Python decrypting our token: %q, %v", out, err)
	}
}
