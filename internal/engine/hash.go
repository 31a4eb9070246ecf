package engine

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"

	"github.com/compose-spec/compose-go/v2/types"
)

// hashVersion changes whenever the way a ServiceConfig becomes a container
// changes (spec.go), so containers made by an older agent are recreated.
const hashVersion = "redash-agent/engine/v1"

// ConfigHash returns the hex SHA-256 that decides whether a container must be
// recreated. It covers a canonical encoding of the service (image, command,
// ports, logging, volumes, networks, healthcheck, labels...) and, for the
// environment the container receives (its env-file values overlaid with its
// own `environment`), only HMAC-SHA256(key, sorted KEY=VALUE). A changed
// secret thus recreates exactly the services that receive it, and the label
// holding the hash reveals nothing about a value without the host's key.
//
// Fields that never reach the container are left out, so changing them does
// not recreate: build, pull policy, scale, deploy, depends_on, profiles, and
// restart (the engine always uses on-failure, see spec.go).
func ConfigHash(svc types.ServiceConfig, env map[string]string, key []byte) string {
	c := svc
	c.Environment = nil
	c.EnvFiles = nil
	c.Build = nil
	c.PullPolicy = ""
	c.Scale = nil
	c.Deploy = nil
	c.DependsOn = nil
	c.Profiles = nil
	c.Restart = ""
	// json.Marshal sorts map keys, so the encoding is canonical. The name is
	// json:"-" in compose-go but decides the network alias, so it goes in.
	enc, err := json.Marshal(c)
	if err != nil {
		// A ServiceConfig always marshals; should compose-go ever change that,
		// an unmarshallable service must still hash differently from others.
		enc = []byte("unencodable: " + err.Error())
	}

	m := hmac.New(sha256.New, key)
	received := serviceEnv(svc, env)
	for _, k := range slices.Sorted(maps.Keys(received)) {
		// Length prefixes keep "A=1\nB=2" and two separate keys apart.
		writeField(m, k)
		writeField(m, received[k])
	}

	h := sha256.New()
	writeField(h, hashVersion)
	writeField(h, svc.Name)
	writeField(h, string(enc))
	writeField(h, string(m.Sum(nil)))
	return hex.EncodeToString(h.Sum(nil))
}

type byteWriter interface{ Write([]byte) (int, error) }

func writeField(w byteWriter, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	_, _ = w.Write(n[:])
	_, _ = w.Write([]byte(s))
}

// serviceEnv is the environment a service's container receives, with compose
// env_file semantics: the whole env file when the service lists an env_file,
// then the service's `environment` on top. A key without a value (`- FOO`)
// takes its value from the env file, as compose takes it from the shell.
func serviceEnv(svc types.ServiceConfig, env map[string]string) map[string]string {
	out := map[string]string{}
	if len(svc.EnvFiles) > 0 {
		maps.Copy(out, env)
	}
	for k, v := range svc.Environment {
		switch {
		case v != nil:
			out[k] = *v
		default:
			if val, ok := env[k]; ok {
				out[k] = val
			} else {
				delete(out, k)
			}
		}
	}
	return out
}

// shortHash is the hash as printed in plans.
func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	if h == "" {
		return "none"
	}
	return h
}
