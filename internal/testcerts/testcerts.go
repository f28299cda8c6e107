// Package testcerts makes certificate authorities and node certificates
// for the tests of mutual TLS between nodes (ECDSA P-256, valid for a day).
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority: a self-signed certificate and its key.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// Pool holds the CA's certificate, to verify what it signed.
	Pool *x509.CertPool
}

// NewCA makes a certificate authority named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	der, key := issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{cert: cert, key: key, Pool: pool}
}

// Cert issues a node certificate named name, for both server and client
// authentication, valid for the IP addresses ips (default 127.0.0.1) and
// the DNS names dns.
func (ca *CA) Cert(t testing.TB, name string, ips []net.IP, dns ...string) tls.Certificate {
	t.Helper()
	if len(ips) == 0 {
		ips = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, key := issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips,
		DNSNames:    dns,
	}, ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Config is a node's TLS configuration: a certificate of this CA for
// 127.0.0.1, and the CA as the one trusted (RootCAs; the node's listener
// uses it for clients too).
func (ca *CA) Config(t testing.TB, name string) *tls.Config {
	t.Helper()
	return &tls.Config{Certificates: []tls.Certificate{ca.Cert(t, name, nil)}, RootCAs: ca.Pool, MinVersion: tls.VersionTLS13}
}

// issue makes a key and a certificate of tmpl for it, valid from an hour
// ago for a day, with a random serial, signed by ca (nil: by itself).
func issue(t testing.TB, tmpl *x509.Certificate, ca *CA) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	parent, parentKey := tmpl, key
	if ca != nil {
		parent, parentKey = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// WriteFiles writes, into dir, a node certificate named name for
// 127.0.0.1 and its key, and the CA's certificate, all PEM, as a program
// reads them from files; it returns their paths.
func (ca *CA) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile, caFile string) {
	t.Helper()
	cert := ca.Cert(t, name, nil)
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	caFile = filepath.Join(dir, "ca.crt")
	for _, f := range []struct {
		path, kind string
		der        []byte
	}{{certFile, "CERTIFICATE", cert.Certificate[0]}, {keyFile, "PRIVATE KEY", keyDER}, {caFile, "CERTIFICATE", ca.cert.Raw}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.kind, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}
