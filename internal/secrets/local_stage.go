package secrets

import (
	"context"
	"fmt"
)

// Versions returns the VersionID of every ref's local secret, keyed by
// Ref.Name, reading the file only ("" for one not generated yet). Local
// secrets never rotate, so the ids stay what Fetch saw.
func (s *LocalStore) Versions(_ context.Context, refs []Ref) (map[string]string, error) {
	f, err := s.load()
	if err != nil {
		return nil, err
	}
	got := make(map[string]string, len(refs))
	for _, r := range refs {
		got[r.Name] = f.Secrets[r.Name].VersionID
	}
	return got, nil
}

// FetchStage always returns ErrNoPreviousVersion: the local provider keeps
// one value per secret and never rotates it.
func (s *LocalStore) FetchStage(_ context.Context, ref Ref, stage string) (Secret, error) {
	return Secret{}, &Error{Name: ref.Name, SecretID: ref.SecretID, Config: true, kind: ErrNoPreviousVersion,
		msg: fmt.Sprintf("local secret %q has no %s version: provider local keeps one value per secret in %q and never rotates it", ref.Name, stage, s.Path)}
}
