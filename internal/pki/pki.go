// Package pki is the cluster's certificate authority: the CA the seed makes
// with the cluster's identity, and the certificates it signs for each
// machine, with which Consul's RPC is mutual TLS and its HTTP API on a
// node's address is HTTPS.
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
// ServerName (it may serve Consul's RPC as a server), any other's
// ClientName; both name MemberName, localhost and the loopback addresses,
// and serve as client and server of TLS.
func (ca CA) Issue(node string, server bool) (Cert, error) {
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
	role := ClientName
	if server {
		role = ServerName
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"raptiformica"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{role, MemberName, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
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

// ClientTLS is the TLS configuration of a client of a member's HTTPS API:
// the server must show a certificate of the cluster's CA that names
// MemberName.
func ClientTLS(caPEM string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("no CA certificate in PEM")
	}
	return &tls.Config{RootCAs: pool, ServerName: MemberName, MinVersion: tls.VersionTLS12}, nil
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
