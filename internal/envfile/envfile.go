// Package envfile owns the dialect of /opt/redash/env: it renders an
// environment map to bytes, parses those bytes back with a strict parser of
// exactly that dialect (for doctor and tests). Both are pure: the agent
// writes the rendered bytes itself, atomically at mode 0600 through
// atomicfile, and only when the content or mode differs.
//
// # Dialect
//
// The file is read by Docker Compose v2 as an env_file, i.e. by compose-go's
// dotenv parser (github.com/compose-spec/compose-go/v2/dotenv). We write:
//
//	# redash-agent env file, dialect: compose v2 env_file (double-quoted, escapes \\ \" \$ \n)
//	KEY="value"
//
// one line per key, keys sorted, every value double-quoted, with exactly four
// escapes: \\ for a backslash, \" for a double quote, \$ for a dollar sign and
// \n for a newline. Every other byte is written as is.
//
// Why this set, from reading compose-go v2.16.2 dotenv/parser.go and
// template/template.go:
//
//   - The double-quote scanner copies bytes verbatim until an unescaped `"`.
//     A backslash before any byte is kept together with that byte for the
//     later escape pass, except `\"`, which becomes a bare `"`. So `"` must
//     be escaped and nothing else is needed to find the end of the value.
//   - The escape pass (expandEscapes) then rewrites \a \b \c \f \n \r \t \v
//     \$ \" \\ and \0NNN octal. A literal backslash followed by one of those
//     letters would be eaten, so every backslash is written as \\. The pass
//     matches left to right without overlap, and our output only ever
//     contains a backslash as the first byte of one of our pairs, so each
//     pair decodes on its own.
//   - Double-quoted values are then interpolated (${X}, $X, ${X:-d}, ...).
//     \$ is turned into $$ by the escape pass and $$ into $ by the
//     interpolation, so writing every $ as \$ makes interpolation a no-op and
//     no variable of the reading process can leak in.
//   - A raw newline inside quotes would round-trip too, but \n keeps one key
//     per line, so the file stays greppable and our own Parse stays simple.
//   - `#` needs no escape: comments are recognised only at the start of a
//     statement or, for unquoted values, after " #". A carriage return, tab,
//     leading or trailing spaces and `=` need none either: quoted values are
//     neither trimmed nor split. Bytes are handled as bytes, so invalid UTF-8
//     round-trips (FuzzRoundTrip checks it).
//   - NUL is rejected: an environment variable cannot hold one (execve takes
//     C strings), so such a value could never reach Redash intact.
package envfile

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Header is the first line of every rendered file. It names the dialect so a
// human reading /opt/redash/env knows how values are quoted, and Parse
// refuses files that are not ours.
const Header = `# redash-agent env file, dialect: compose v2 env_file (double-quoted, escapes \\ \" \$ \n)`

// Render returns the env file for env: the header, then one KEY="value" line
// per key in sorted order. It fails for a key that is not a valid
// environment variable name ([A-Za-z_][A-Za-z0-9_]*) or a value containing a
// NUL byte; the error names the key and never the value.
func Render(env map[string]string) ([]byte, error) {
	keys := make([]string, 0, len(env))
	size := len(Header) + 1
	var bad []string
	for k, v := range env {
		keys = append(keys, k)
		if !validKey(k) {
			bad = append(bad, fmt.Sprintf("key %q is not a valid variable name (use letters, digits and _, not starting with a digit)", k))
		} else if strings.IndexByte(v, 0) >= 0 {
			bad = append(bad, fmt.Sprintf("value of %q contains a NUL byte, which no environment variable can hold (remove it from its source)", k))
		}
		// 4 = `="` + `"` + newline; the slack covers a few escapes.
		size += len(k) + len(v) + 4 + len(v)/16
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return nil, fmt.Errorf("rendering env file: %s", strings.Join(bad, "; "))
	}
	slices.Sort(keys)

	b := make([]byte, 0, size)
	b = append(b, Header...)
	b = append(b, '\n')
	for _, k := range keys {
		b = append(b, k...)
		b = append(b, '=', '"')
		b = appendQuoted(b, env[k])
		b = append(b, '"', '\n')
	}
	return b, nil
}

// appendQuoted appends v with the four escapes of the dialect.
func appendQuoted(b []byte, v string) []byte {
	for {
		i := strings.IndexAny(v, "\\\"$\n")
		if i < 0 {
			return append(b, v...)
		}
		b = append(b, v[:i]...)
		switch v[i] {
		case '\n':
			b = append(b, '\\', 'n')
		default:
			b = append(b, '\\', v[i])
		}
		v = v[i+1:]
	}
}

// Parse reads a file in exactly the dialect Render writes and returns its
// variables. It is deliberately stricter than compose-go: the header must
// come first, every line must be KEY="value" with a valid key, only the four
// escapes are allowed, keys must be sorted without duplicates and the file
// must end in a newline. So Render(Parse(data)) == data for any data Parse
// accepts, and a file edited by hand is reported rather than half-read.
// Errors name the line and key, never a value.
func Parse(data []byte) (map[string]string, error) {
	rest, ok := bytes.CutPrefix(data, []byte(Header+"\n"))
	if !ok {
		return nil, fmt.Errorf("parsing env file: line 1 is not the header %q (the file was not written by redash-agent; run `redash-agent render` to rewrite it)", Header)
	}
	env := map[string]string{}
	prev := ""
	var val []byte
	for line := 2; len(rest) > 0; line++ {
		end := bytes.IndexByte(rest, '\n')
		if end < 0 {
			return nil, fmt.Errorf("parsing env file: line %d: missing final newline (the file is truncated; run `redash-agent render` to rewrite it)", line)
		}
		text := rest[:end]
		rest = rest[end+1:]

		eq := bytes.IndexByte(text, '=')
		if eq < 0 {
			return nil, fmt.Errorf("parsing env file: line %d: not KEY=\"value\"", line)
		}
		key := string(text[:eq])
		if !validKey(key) {
			return nil, fmt.Errorf("parsing env file: line %d: key %q is not a valid variable name", line, key)
		}
		if _, dup := env[key]; dup {
			return nil, fmt.Errorf("parsing env file: line %d: key %q appears twice", line, key)
		}
		if key < prev {
			return nil, fmt.Errorf("parsing env file: line %d: key %q is out of order (keys are sorted)", line, key)
		}
		prev = key

		q := text[eq+1:]
		if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
			return nil, fmt.Errorf("parsing env file: line %d: value of %q is not double-quoted", line, key)
		}
		var err error
		// val is reused between lines; string(val) below copies it.
		val, err = unquote(val[:0], q[1:len(q)-1])
		if err != nil {
			return nil, fmt.Errorf("parsing env file: line %d: value of %q: %w", line, key, err)
		}
		env[key] = string(val)
	}
	return env, nil
}

// unquote decodes the inside of a quoted value. Its errors describe the
// problem by position only, so a secret never reaches an error message.
func unquote(dst, s []byte) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("byte %d: backslash at the end of the value", i+1)
			}
			i++
			switch s[i] {
			case '\\', '"', '$':
				dst = append(dst, s[i])
			case 'n':
				dst = append(dst, '\n')
			default:
				return nil, fmt.Errorf("byte %d: unsupported escape (only \\\\ \\\" \\$ \\n)", i)
			}
		case '"', '$':
			return nil, fmt.Errorf("byte %d: unescaped %q", i+1, c)
		case 0:
			return nil, fmt.Errorf("byte %d: NUL byte", i+1)
		default:
			dst = append(dst, c)
		}
	}
	return dst, nil
}

// validKey reports whether k is a portable environment variable name. The
// compose-go parser accepts more (., -, [, ]), but a shell or Redash's own
// settings code cannot use those, so we refuse them at the source.
func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_', 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
