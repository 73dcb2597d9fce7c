package agentapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// JoinPath is where a member gives a machine holding a join token its node
// config, over TLS only.
const JoinPath = "/v1/join"

// JoinRequest is the body of POST /v1/join (jointoken.Request: the
// server's side of the exchange reads it without this client).
type JoinRequest = jointoken.Request

// CAMismatch is Join's error when the member shows a CA other than the one
// the token names: nothing was sent to it.
type CAMismatch struct {
	Agent string
	Want  string
	Got   []string
}

// Error names both hashes.
func (e *CAMismatch) Error() string {
	return fmt.Sprintf("agent at %s shows CA sha256 %s, the token names %s: not the cluster the token is for; nothing was sent",
		e.Agent, strings.Join(e.Got, ", "), e.Want)
}

// Join asks the member at addr (HOST[:PORT], its TLS port, 9551 unless
// given) for a node config in exchange for a join token. In the TLS
// handshake, before anything is sent, the member's certificate must chain
// to a CA whose SHA-256 is the token's (otherwise it returns a
// *CAMismatch) and name a server. A member that refuses the token returns
// an *AgentRefused.
func Join(ctx context.Context, addr string, tok jointoken.Token, typ string) (nodeconfig.Config, error) {
	var cfg nodeconfig.Config
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(nodeconfig.AgentHTTPSPort))
	}
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The CA is not known yet: it is checked by the token's hash
		// below, and the member's certificate against it.
		InsecureSkipVerify: true,
		VerifyConnection:   func(cs tls.ConnectionState) error { return verifyByHash(addr, cs, tok.CAHash) },
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, TLSHandshakeTimeout: 10 * time.Second}}
	b, _ := json.Marshal(JoinRequest{TokenID: tok.ID, Secret: tok.Secret, Type: typ})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+JoinPath, bytes.NewReader(b))
	if err != nil {
		return cfg, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		var mm *CAMismatch
		if errors.As(err, &mm) {
			return cfg, mm
		}
		return cfg, fmt.Errorf("agent at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		buf, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return cfg, &AgentRefused{Agent: addr, Status: resp.Status, Reason: strings.TrimSpace(string(buf))}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("agent at %s: node config: %w", addr, err)
	}
	return cfg, nil
}

// verifyByHash accepts the connection only when one of the certificates
// the member sent is a CA whose SHA-256 is want, and the member's own
// certificate is signed by it for a server of the cluster: the secret
// buys a machine's credentials (a server's, with the CA key, for a server
// token), so a client, which holds only its own keys, never sees it.
func verifyByHash(addr string, cs tls.ConnectionState, want string) error {
	if len(cs.PeerCertificates) == 0 {
		return &CAMismatch{Agent: addr, Want: want}
	}
	var got []string
	for _, c := range cs.PeerCertificates[1:] {
		sum := sha256.Sum256(c.Raw)
		h := hex.EncodeToString(sum[:])
		if h != want {
			got = append(got, h)
			continue
		}
		if !c.IsCA {
			break
		}
		roots := x509.NewCertPool()
		roots.AddCert(c)
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: pki.MemberName})
		if err != nil {
			return fmt.Errorf("agent at %s: its certificate is not one of the cluster's CA: %w", addr, err)
		}
		if err := pki.CheckPeer(cs.PeerCertificates[0], ""); err != nil {
			return fmt.Errorf("agent at %s: %w; ask a server", addr, err)
		}
		return nil
	}
	return &CAMismatch{Agent: addr, Want: want, Got: got}
}
