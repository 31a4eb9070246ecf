// Package secrets owns reading Redash's secrets: from AWS Secrets Manager
// (Fetcher) or, on hosts without AWS, from a local store of values generated
// once (LocalStore). It also owns the Value type that keeps a secret out of
// logs, errors and encodings, and the Error type whose ExitStatus tells a
// configuration mistake (exit 3, no restart loop) from a transient failure.
//
// Side effects: Fetcher makes GetSecretValue calls (read-only) and logs the
// name, id and VersionId of each secret, never a value. LocalStore reads and
// writes one JSON file at mode 0600 (and a lock file beside it).
package secrets
