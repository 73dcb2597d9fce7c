package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
)

// TestTrustCertNamesRoleAndID: a machine's certificate names its role and
// its machine ID, which only the CA puts there: a server's names the
// server role and no client's does, so a caller can tell the two apart by
// the certificate alone (by name, as any TLS client checks one).
func TestTrustCertNamesRoleAndID(t *testing.T) {
	ca := mustCA(t)
	for _, tc := range []struct {
		id           string
		server       bool
		role, notFor string
	}{
		{"server-1a2b3c4d", true, "server.raptiformica", "client.raptiformica"},
		{"worker-5e6f7a8b", false, "client.raptiformica", "server.raptiformica"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			c, err := ca.Issue(tc.id, tc.server)
			if err != nil {
				t.Fatal(err)
			}
			if err := verify(t, ca, c, tc.role); err != nil {
				t.Errorf("verify for %s: %v, want ok", tc.role, err)
			}
			if err := verify(t, ca, c, tc.notFor); err == nil {
				t.Errorf("verify for %s: ok, want refused", tc.notFor)
			}
			cert, _ := ParseCert(c.CertPEM)
			var uris []string
			for _, u := range cert.URIs {
				uris = append(uris, u.String())
			}
			if want := "raptiformica://machine/" + tc.id; !slices.Contains(uris, want) {
				t.Errorf("URI names: got %v, want %s among them", uris, want)
			}
			// Consul's own names stay: verify_server_hostname needs them.
			consul := map[bool]string{true: ServerName, false: ClientName}[tc.server]
			if err := verify(t, ca, c, consul); err != nil {
				t.Errorf("verify for %s: %v", consul, err)
			}
		})
	}
}

// serveTLS accepts TLS connections with c until the test ends and counts
// those whose handshake the client completed.
func serveTLS(t *testing.T, c Cert) (string, func() int) {
	t.Helper()
	pair, err := tls.X509KeyPair([]byte(c.CertPEM), []byte(c.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan int, 64)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if conn.(*tls.Conn).Handshake() == nil {
					buf := make([]byte, 1)
					if n, _ := conn.Read(buf); n == 1 {
						done <- 1
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), func() int { return len(done) }
}

// TestTrustClientTLSChecksRoleAndID: ClientTLS, what every caller that
// sends an operator's token uses, completes a handshake only with a
// server's certificate, of the machine it addresses when it names one;
// nothing is written to any other.
func TestTrustClientTLSChecksRoleAndID(t *testing.T) {
	ca := mustCA(t)
	issue := func(id string, server bool) Cert {
		c, err := ca.Issue(id, server)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name    string
		peer    Cert
		address string // the machine ID the caller addresses
		ok      bool
		why     string
	}{
		{"a server", issue("server-1", true), "", true, ""},
		{"the server addressed", issue("server-1", true), "server-1", true, ""},
		{"a client", issue("worker-1", false), "", false, "not a server's"},
		{"a client with the ID addressed", issue("worker-1", false), "worker-1", false, "not a server's"},
		{"another server than the one addressed", issue("server-2", true), "server-1", false, "not server-1's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, wrote := serveTLS(t, tc.peer)
			cfg, err := ClientTLS(ca.CertPEM, tc.address)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				_, err = conn.Write([]byte("T"))
				conn.Close()
			}
			if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), tc.why)) {
				t.Fatalf("got %v, want ok=%v (%s)", err, tc.ok, tc.why)
			}
			if !tc.ok && wrote() != 0 {
				t.Errorf("a byte reached a peer the caller refused")
			}
		})
	}
}

// A certificate signed before certificates named role and ID is read by
// what the CA put on it then: Consul's role name and its common name.
func TestTrustPeerOfOldCertificate(t *testing.T) {
	ca := mustCA(t)
	caCert, caKey, err := ca.parse()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dns  string
		want Peer
	}{
		{ServerName, Peer{MachineID: "server-old", Role: RoleServer}},
		{ClientName, Peer{MachineID: "server-old", Role: RoleClient}},
	} {
		tmpl := &x509.Certificate{SerialNumber: caCert.SerialNumber, Subject: caCert.Subject, DNSNames: []string{tc.dns, MemberName}}
		tmpl.Subject.CommonName = "server-old"
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, caKey.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		if got := PeerOf(c); got != tc.want {
			t.Errorf("%s: got %+v want %+v", tc.dns, got, tc.want)
		}
	}
	if err := CheckPeer(&x509.Certificate{DNSNames: []string{MemberName}}, ""); err == nil {
		t.Error("a certificate naming no role passed as a server's")
	}
}
