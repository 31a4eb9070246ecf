// Package fernet checks which REDASH_SECRET_KEY Redash's encrypted columns
// are encrypted with, without Redash: data_sources.encrypted_options and
// notification_destinations.encrypted_options hold Fernet tokens
// (github.com/fernet/spec: AES-128-CBC, HMAC-SHA256) made by sqlalchemy_utils'
// FernetEngine, whose Fernet key is urlsafe_b64encode(sha256(secret)).
//
// The agent only ever decrypts to count: a plaintext never leaves this
// package. Side effects: SQL reads on the connection it is given.
package fernet

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	version  = 0x80
	overhead = 1 + 8 + aes.BlockSize + sha256.Size // version, timestamp, IV, HMAC
)

// ErrInvalidToken: the token is malformed or was not made with this key.
var ErrInvalidToken = errors.New("fernet: invalid token")

// Key is a Fernet key: the first half signs, the second encrypts.
type Key struct{ signing, encryption []byte }

// KeyFromSecret is the key sqlalchemy_utils' FernetEngine derives from a
// secret (Redash's REDASH_SECRET_KEY): sha256 of its UTF-8 bytes.
func KeyFromSecret(secret string) Key {
	d := sha256.Sum256([]byte(secret))
	return Key{signing: d[:16], encryption: d[16:]}
}

// ParseKey reads a 32-byte key in the spec's urlsafe base64 form.
func ParseKey(s string) (Key, error) {
	b, err := base64.URLEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return Key{}, errors.New("fernet: a key is 32 bytes in urlsafe base64")
	}
	return Key{signing: b[:16], encryption: b[16:]}, nil
}

// Decrypt checks token's HMAC and returns its plaintext. Tokens do not
// expire here (Redash sets no TTL).
func (k Key) Decrypt(token string) ([]byte, error) {
	b, err := base64.URLEncoding.DecodeString(token)
	if err != nil || len(b) < overhead || b[0] != version {
		return nil, ErrInvalidToken
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	m := hmac.New(sha256.New, k.signing)
	m.Write(body)
	if !hmac.Equal(m.Sum(nil), sum) {
		return nil, ErrInvalidToken
	}
	iv, ct := body[9:9+aes.BlockSize], body[9+aes.BlockSize:]
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, ErrInvalidToken
	}
	block, err := aes.NewCipher(k.encryption)
	if err != nil {
		return nil, ErrInvalidToken
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > aes.BlockSize || !bytes.Equal(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return nil, ErrInvalidToken
	}
	return pt[:len(pt)-pad], nil
}

// Encrypt makes a token of plaintext at time now with a random IV.
func (k Key) Encrypt(plaintext []byte, now time.Time) string {
	iv := make([]byte, aes.BlockSize)
	_, _ = rand.Read(iv)
	return k.encryptWith(plaintext, now, iv)
}

func (k Key) encryptWith(plaintext []byte, now time.Time, iv []byte) string {
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	pt := append(append([]byte{}, plaintext...), bytes.Repeat([]byte{byte(pad)}, pad)...)
	block, _ := aes.NewCipher(k.encryption) // 16 bytes: cannot fail
	ct := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, pt)
	out := make([]byte, 0, overhead+len(ct))
	out = append(out, version)
	out = binary.BigEndian.AppendUint64(out, uint64(now.Unix()))
	out = append(out, iv...)
	out = append(out, ct...)
	m := hmac.New(sha256.New, k.signing)
	m.Write(out)
	out = m.Sum(out)
	return base64.URLEncoding.EncodeToString(out)
}

// EncryptedTables are Redash's tables whose encrypted_options use
// REDASH_SECRET_KEY.
var EncryptedTables = []string{"data_sources", "notification_destinations"}

// Querier is what CountDecryptable needs of a session (*pgx.Conn, pgx.Tx).
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Count is how many rows of the encrypted tables decrypt with each of the
// keys asked about; Total counts the rows that hold a value.
type Count struct {
	Total int
	OK    []int // OK[i]: rows that decrypt with keys[i]
}

// CountDecryptable reads every non-empty encrypted_options of both tables
// and counts, per key, the rows it decrypts. A table that does not exist
// (a database before create_db) counts as empty.
func CountDecryptable(ctx context.Context, q Querier, keys ...Key) (Count, error) {
	c := Count{OK: make([]int, len(keys))}
	for _, table := range EncryptedTables {
		var present bool
		if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, "public."+table).Scan(&present); err != nil {
			return c, fmt.Errorf("looking for table %s: %w", table, err)
		}
		if !present {
			continue
		}
		rows, err := q.Query(ctx, `SELECT encrypted_options FROM public.`+table+` WHERE coalesce(encrypted_options, '') <> ''`)
		if err != nil {
			return c, fmt.Errorf("reading %s.encrypted_options: %w", table, err)
		}
		tokens, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return c, fmt.Errorf("reading %s.encrypted_options: %w", table, err)
		}
		for _, tok := range tokens {
			c.Total++
			for i, k := range keys {
				if _, err := k.Decrypt(tok); err == nil {
					c.OK[i]++
				}
			}
		}
	}
	return c, nil
}
