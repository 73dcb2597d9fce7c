package provision

import (
	"context"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/backends"
)

// StoreHostKeys keeps host keys in a folder of the cluster's KV: the first
// node to reach a machine records its key (check-and-set, so two adopters
// cannot record two keys), and every node after it checks against that one.
type StoreHostKeys struct {
	Store backends.Store
}

// HostKey returns the key recorded for hostport.
func (s StoreHostKeys) HostKey(ctx context.Context, hostport string) (ssh.PublicKey, bool, error) {
	value, index, err := s.Store.Get(ctx, hostport)
	if err != nil || index == 0 {
		return nil, false, err
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(value)
	if err != nil {
		return nil, false, fmt.Errorf("recorded host key of %s: %w", hostport, err)
	}
	return key, true, nil
}

// RecordHostKey records key for hostport unless a key is recorded, and
// returns the recorded one.
func (s StoreHostKeys) RecordHostKey(ctx context.Context, hostport string, key ssh.PublicKey) (ssh.PublicKey, error) {
	ok, err := s.Store.CAS(ctx, hostport, ssh.MarshalAuthorizedKey(key), 0)
	if err != nil {
		return nil, err
	}
	if ok {
		return key, nil
	}
	rec, found, err := s.HostKey(ctx, hostport)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("host key of %s: recorded and gone again", hostport)
	}
	return rec, nil
}
