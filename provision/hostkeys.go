package provision

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"
	"golang.org/x/crypto/ssh"
)

// KeyHostKeys is the KV folder of host keys trusted on first use, one key
// per host:port, in authorized_keys format.
const KeyHostKeys = "raptiformica/hostkeys/"

// KVHostKeys keeps host keys in the cluster's KV: the first node to reach a
// machine records its key (check-and-set, so two adopters cannot record
// two keys), and every node after it checks against that one.
type KVHostKeys struct {
	KV *api.KV
}

func hostKeyPath(hostport string) string {
	return KeyHostKeys + kvSegment(hostport)
}

// HostKey returns the key recorded for hostport.
func (s KVHostKeys) HostKey(ctx context.Context, hostport string) (ssh.PublicKey, bool, error) {
	pair, _, err := s.KV.Get(hostKeyPath(hostport), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return nil, false, err
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(pair.Value)
	if err != nil {
		return nil, false, fmt.Errorf("recorded host key of %s: %w", hostport, err)
	}
	return key, true, nil
}

// RecordHostKey records key for hostport unless a key is recorded, and
// returns the recorded one.
func (s KVHostKeys) RecordHostKey(ctx context.Context, hostport string, key ssh.PublicKey) (ssh.PublicKey, error) {
	ok, _, err := s.KV.CAS(&api.KVPair{Key: hostKeyPath(hostport), Value: ssh.MarshalAuthorizedKey(key)}, (&api.WriteOptions{}).WithContext(ctx))
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
