// Package pki is the cluster's certificate authority: the CA the seed makes
// with the cluster's identity, and the certificates it signs for each
// machine, with which Consul's RPC is mutual TLS and its HTTP API on a
// node's address is HTTPS.
//
// A certificate says who holds it: its machine ID (a URI name,
// raptiformica://machine/<id>) and its role (a DNS name, server.raptiformica
// or client.raptiformica). The CA alone puts them there, so a member cannot
// claim another role or another machine's ID: callers that send a
// credential giving the cluster's authority (an operator's token, a join
// secret) check that the peer's certificate names a server, and, when they
// address one machine, its ID (ClientTLS, CheckPeer). The role is a DNS name
// so that any TLS client can check it by name (Consul's CLI with
// CONSUL_TLS_SERVER_NAME=server.raptiformica, curl); the ID is a URI
// because an ID is not bounded to a DNS label's length.
//
// Certificates are signed by whoever makes a machine (`up` for the seed,
// the leader, `adopt`), from the CA key it holds, and written into the
// machine's node config with the rest of its credentials. Consul's
// auto_encrypt would sign clients' certificates with Consul's own Connect
// CA instead; we do not use it because that CA lives in Raft: a survivor
// that re-creates the cluster on a fresh Raft would get a new one, and the
// certificates of every client would stop matching. Our CA lives in files,
// on the servers, and survives any recovery.
package pki

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Names a certificate is valid for. Consul checks ServerName on every RPC
// connection to a server (verify_server_hostname): only a certificate that
// names it may act as a server, so a client's certificate cannot be used to
// pose as one. MemberName is on every certificate: HTTPS clients check it,
// which proves "a machine of this cluster" whatever its address, which a
// certificate signed before the machine had one cannot name.
const (
	ServerName = "server.dc1.consul"
	ClientName = "client.dc1.consul"
	MemberName = "member.raptiformica"
)

// Roles a certificate names, and the DNS names that say them.
const (
	RoleServer = "server"
	RoleClient = "client"
	// ServerRoleName is on a server's certificate only: check it (as the
	// TLS server name) before sending a credential that gives the
	// cluster's authority.
	ServerRoleName = RoleServer + ".raptiformica"
	ClientRoleName = RoleClient + ".raptiformica"
)

// MachineURI is the URI name of machine id on its certificate,
// raptiformica://machine/<id>.
func MachineURI(id string) *url.URL {
	return &url.URL{Scheme: "raptiformica", Host: "machine", Path: "/" + id}
}

// Validity of what the CA signs. Nothing renews certificates yet, so they
// outlive the machines they are made for; a machine replaced by the
// cluster gets a new one.
const (
	caValidity   = 20 * 365 * 24 * time.Hour
	certValidity = 10 * 365 * 24 * time.Hour
)

// CA is a certificate authority: its certificate and its private key, both
// PEM.
type CA struct {
	CertPEM string
	KeyPEM  string
}

// NewCA makes a cluster's CA, named after the cluster.
func NewCA(cluster string) (CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return CA{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return CA{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "raptiformica CA " + cluster, Organization: []string{"raptiformica"}},
		NotBefore:             now.Add(-time.Hour), // a machine whose clock is a little behind
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return CA{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return CA{}, err
	}
	return CA{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// Cert is a machine's certificate and private key, PEM.
type Cert struct {
	CertPEM string
	KeyPEM  string
}

// Issue signs a certificate for the machine named node: a server's names
// ServerName (it may serve Consul's RPC as a server) and ServerRoleName,
// any other's ClientName and ClientRoleName; both name MemberName,
// localhost, the loopback addresses and MachineURI(node), and serve as
// client and server of TLS.
func (ca CA) Issue(node string, server bool) (Cert, error) {
	if node == "" || strings.ContainsAny(node, "/?#") {
		return Cert{}, fmt.Errorf("issue a certificate: bad machine id %q", node)
	}
	caCert, caKey, err := ca.parse()
	if err != nil {
		return Cert{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Cert{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return Cert{}, err
	}
	consulRole, role := ClientName, ClientRoleName
	if server {
		consulRole, role = ServerName, ServerRoleName
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"raptiformica"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{consulRole, role, MemberName, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:         []*url.URL{MachineURI(node)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return Cert{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return Cert{}, err
	}
	return Cert{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

func (ca CA) parse() (*x509.Certificate, crypto.Signer, error) {
	cert, err := ParseCert(ca.CertPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	b, _ := pem.Decode([]byte(ca.KeyPEM))
	if b == nil {
		return nil, nil, errors.New("CA key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("CA key: not a signing key")
	}
	return cert, signer, nil
}

// ParseCert reads the first certificate of a PEM text.
func ParseCert(certPEM string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// Fingerprint is the SHA-256 of a certificate's DER, in hex: how a join
// token names the CA a machine must find before it sends anything.
func Fingerprint(certPEM string) (string, error) {
	c, err := ParseCert(certPEM)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:]), nil
}

// Peer is who a certificate of the cluster's CA says its holder is.
type Peer struct {
	MachineID string
	// Role is RoleServer, RoleClient, or "" when the certificate names
	// none.
	Role string
}

// PeerOf reads who c names. A certificate signed before certificates named
// their role and ID (it names neither ServerRoleName nor ClientRoleName)
// is read by what it named then, which only the CA put there too: Consul's
// server or client name for the role, its common name for the ID. PeerOf
// does not check the signature: call it on a verified chain's leaf.
func PeerOf(c *x509.Certificate) Peer {
	var p Peer
	for _, u := range c.URIs {
		if id := strings.TrimPrefix(u.Path, "/"); u.Scheme == "raptiformica" && u.Host == "machine" && id != "" {
			p.MachineID = id
		}
	}
	if p.Role = roleNamed(c.DNSNames, ServerRoleName, ClientRoleName); p.Role != "" {
		return p
	}
	p.Role = roleNamed(c.DNSNames, ServerName, ClientName)
	if p.MachineID == "" {
		p.MachineID = c.Subject.CommonName
	}
	return p
}

// roleNamed is the role names say, a server's name winning.
func roleNamed(names []string, server, client string) string {
	switch {
	case slices.Contains(names, server):
		return RoleServer
	case slices.Contains(names, client):
		return RoleClient
	}
	return ""
}

// CheckPeer says why the verified leaf c may not be sent a credential that
// gives the cluster's authority: it names no server, or, when machineID is
// not empty, another machine. Nil when it may.
func CheckPeer(c *x509.Certificate, machineID string) error {
	p := PeerOf(c)
	if p.Role != RoleServer {
		return fmt.Errorf("its certificate (machine %s) is a %s's, not a server's: no token or join secret is sent to it", p.MachineID, cmp.Or(p.Role, "roleless member"))
	}
	if machineID != "" && p.MachineID != machineID {
		return fmt.Errorf("its certificate is machine %s's, not %s's", p.MachineID, machineID)
	}
	return nil
}

// ClientTLS is the TLS configuration of a client that sends a credential
// to a member's agent over HTTPS: the server must show a
// certificate of the cluster's CA (it names MemberName) for a server
// (CheckPeer), of machine machineID unless that is empty. The handshake
// fails before any request is sent otherwise.
func ClientTLS(caPEM, machineID string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("no CA certificate in PEM")
	}
	return &tls.Config{
		RootCAs: pool, ServerName: MemberName, MinVersion: tls.VersionTLS12,
		// Runs after the chain and MemberName are verified, so the leaf
		// is the CA's.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			return CheckPeer(cs.PeerCertificates[0], machineID)
		},
	}, nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func encodeKey(k *ecdsa.PrivateKey) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}
