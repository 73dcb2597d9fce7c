package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
)

func mustCA(t *testing.T) CA {
	t.Helper()
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func verify(t *testing.T, ca CA, c Cert, name string) error {
	t.Helper()
	cert, err := ParseCert(c.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(ca.CertPEM))
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// Only a server's certificate names the server: Consul's
// verify_server_hostname relies on it to keep clients from posing as
// servers.
func TestIssueRoles(t *testing.T) {
	ca := mustCA(t)
	srv, err := ca.Issue("server-1", true)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue("worker-1", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert Cert
		name string
		ok   bool
	}{
		{srv, ServerName, true}, {srv, MemberName, true}, {srv, ClientName, false},
		{cli, ClientName, true}, {cli, MemberName, true}, {cli, ServerName, false},
	} {
		if err := verify(t, ca, tc.cert, tc.name); (err == nil) != tc.ok {
			t.Errorf("verify for %s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	other := mustCA(t)
	if err := verify(t, other, srv, ServerName); err == nil {
		t.Error("a certificate verified against another cluster's CA")
	}
}

// A client with ClientTLS talks to a server holding a certificate of the
// same CA, and refuses one of another CA.
func TestClientTLSHandshake(t *testing.T) {
	ca := mustCA(t)
	cfg, err := ClientTLS(ca.CertPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		signer CA
		ok     bool
	}{{ca, true}, {mustCA(t), false}} {
		c, err := tc.signer.Issue("n", true)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair([]byte(c.CertPEM), []byte(c.KeyPEM))
		if err != nil {
			t.Fatal(err)
		}
		a, b := net.Pipe()
		go func() {
			s := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{pair}})
			_ = s.Handshake()
			s.Close()
		}()
		err = tls.Client(b, cfg).Handshake()
		b.Close()
		if (err == nil) != tc.ok {
			t.Errorf("handshake: %v, want ok=%v", err, tc.ok)
		}
	}
}

func TestFingerprintAndBadInput(t *testing.T) {
	ca := mustCA(t)
	fp, err := Fingerprint(ca.CertPEM)
	if err != nil || len(fp) != 64 {
		t.Fatalf("fingerprint %q, %v", fp, err)
	}
	if fp2, _ := Fingerprint(mustCA(t).CertPEM); fp2 == fp {
		t.Error("two CAs share a fingerprint")
	}
	if _, err := (CA{CertPEM: ca.CertPEM, KeyPEM: "junk"}).Issue("n", false); err == nil || !strings.Contains(err.Error(), "CA key") {
		t.Errorf("a damaged CA key: %v", err)
	}
	if _, err := ClientTLS("junk", ""); err == nil {
		t.Error("ClientTLS took no certificate")
	}
}
