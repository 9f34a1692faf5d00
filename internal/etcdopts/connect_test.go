package etcdopts

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/testutil/etcdtest"
)

// pki is a test CA and the files of certificates it signed.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	File string // the CA certificate, PEM
}

var serial int64

func newCA(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), cert: cert, key: key}
	p.File = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	f := filepath.Join(p.dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// issue signs a certificate for 127.0.0.1 (server and client use) valid
// from notBefore to notAfter; it returns the cert and key files.
func (p *pki) issue(t *testing.T, name string, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".pem", "CERTIFICATE", der), p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
}

func valid() (time.Time, time.Time) {
	return time.Now().Add(-time.Hour), time.Now().Add(24 * time.Hour)
}

// connect runs Connect and checks it answers within ConnectTimeout.
func connect(t *testing.T, o Options) error {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	start := time.Now()
	cli, err := o.Connect(context.Background())
	took := time.Since(start)
	if took > ConnectTimeout {
		t.Errorf("Connect took %s, more than %s", took, ConnectTimeout)
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, perr := cli.Put(ctx, o.Prefix+"/config", "{}"); perr != nil {
			t.Errorf("put through a connected client: %v", perr)
		}
		cli.Close()
	}
	t.Logf("took %s: %v", took.Round(time.Millisecond), err)
	return err
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("connected, want an error saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
	if n := strings.Count(err.Error(), "\n"); n > 0 {
		t.Errorf("error spans %d lines, want one", n+1)
	}
}

func TestTLS(t *testing.T) {
	ca := newCA(t, "weft-test-ca")
	other := newCA(t, "someone-else")
	nb, na := valid()
	srvCert, srvKey := ca.issue(t, "etcd-server", nb, na)
	cliCert, cliKey := ca.issue(t, "weft-client", nb, na)
	expCert, expKey := ca.issue(t, "weft-expired", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	strangerCert, strangerKey := other.issue(t, "stranger", nb, na)

	srv := etcdtest.NewTLS(t, etcdtest.TLS{CertFile: srvCert, KeyFile: srvKey, ClientCAFile: ca.File})
	ep := srv.Endpoint

	t.Run("good", func(t *testing.T) {
		if err := connect(t, Options{Endpoints: ep, CertFile: cliCert, KeyFile: cliKey, CAFile: ca.File}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, CertFile: cliCert, KeyFile: cliKey, CAFile: other.File})
		wantErr(t, err, ep, "not signed by the CA in -etcd-cafile", other.File)
	})
	t.Run("expired client certificate", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, CertFile: expCert, KeyFile: expKey, CAFile: ca.File})
		wantErr(t, err, ep, "client certificate", "expired")
	})
	t.Run("client certificate of another CA", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, CertFile: strangerCert, KeyFile: strangerKey, CAFile: ca.File})
		wantErr(t, err, ep, "rejected the client certificate")
	})
	t.Run("no client certificate", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, CAFile: ca.File})
		wantErr(t, err, ep, "client certificate")
	})
	t.Run("expired server certificate", func(t *testing.T) {
		c, k := ca.issue(t, "etcd-expired", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
		old := etcdtest.NewTLS(t, etcdtest.TLS{CertFile: c, KeyFile: k})
		err := connect(t, Options{Endpoints: old.Endpoint, CAFile: ca.File})
		wantErr(t, err, old.Endpoint, "server certificate has expired")
	})
	t.Run("http to a TLS endpoint", func(t *testing.T) {
		plain := "http://" + strings.TrimPrefix(ep, "https://")
		err := connect(t, Options{Endpoints: plain})
		wantErr(t, err, plain)
	})
}

func TestAuth(t *testing.T) {
	srv := etcdtest.New(t)
	root := etcdtest.NewClient(t, srv)
	etcdtest.EnableAuth(t, root, "weft", "s3cret", DefaultPrefix+"/")
	ep := srv.Endpoint

	t.Run("good", func(t *testing.T) {
		if err := connect(t, Options{Endpoints: ep, Username: "weft", Password: "s3cret"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, Username: "weft", Password: "guess"})
		wantErr(t, err, ep, "authentication failed")
		if strings.Contains(err.Error(), "guess") {
			t.Errorf("error %q contains the password", err)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, Username: "mallory", Password: "s3cret"})
		wantErr(t, err, ep, "authentication failed", `"mallory"`)
	})
	t.Run("no credentials", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep})
		wantErr(t, err, ep)
	})
	t.Run("outside the granted prefix", func(t *testing.T) {
		err := connect(t, Options{Endpoints: ep, Prefix: "/other/network", Username: "weft", Password: "s3cret"})
		wantErr(t, err, ep, "permission denied")
	})
}

// With several endpoints one dead one is skipped; when all fail, each is
// named with its own cause.
func TestEndpointsFailover(t *testing.T) {
	srv := etcdtest.New(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	if err := connect(t, Options{Endpoints: dead + "," + srv.Endpoint}); err != nil {
		t.Fatalf("one live endpoint of two: %v", err)
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead2 := "http://" + l2.Addr().String()
	l2.Close()
	err = connect(t, Options{Endpoints: dead + "," + dead2})
	wantErr(t, err, dead+": connection refused", dead2+": connection refused")
}

// -etcd-password-file: the password is read from a file only its owner can
// read (one trailing newline ignored); a file others can read, a missing
// one, or both the flag and the file are refused with the flag, the file
// and the rule; a wrong password names the file, never its content.
func TestPasswordFile(t *testing.T) {
	srv := etcdtest.New(t)
	etcdtest.EnableAuth(t, etcdtest.NewClient(t, srv), "weft", "s3cret", DefaultPrefix+"/")
	ep := srv.Endpoint
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := file("good", "s3cret\n", 0o600)

	t.Run("good", func(t *testing.T) {
		if err := connect(t, Options{Endpoints: ep, Username: "weft", PasswordFile: good}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		wrong := file("wrong", "guess\n", 0o400)
		err := connect(t, Options{Endpoints: ep, Username: "weft", PasswordFile: wrong})
		wantErr(t, err, ep, "authentication failed", `wrong password in -etcd-password-file "`+wrong+`"`)
		if strings.Contains(err.Error(), "guess") {
			t.Errorf("error %q contains the password", err)
		}
	})
	for _, c := range []struct {
		name string
		o    Options
		want []string
	}{
		{"readable by others", Options{PasswordFile: file("world", "s3cret\n", 0o644)},
			[]string{`-etcd-password-file "` + dir + `/world": mode 0644 lets group or others access the password: must be readable by its owner only (chmod 600)`}},
		{"readable by group", Options{PasswordFile: file("group", "s3cret\n", 0o640)}, []string{"mode 0640 lets group or others"}},
		{"missing", Options{PasswordFile: dir + "/none"}, []string{`-etcd-password-file "` + dir + `/none": open`, "no such file"}},
		{"empty", Options{PasswordFile: file("empty", "\n", 0o600)}, []string{`-etcd-password-file "` + dir + `/empty": empty`}},
		{"both", Options{Password: "s3cret", PasswordFile: good}, []string{`-etcd-password and -etcd-password-file "` + good + `": give one or the other`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.o.Endpoints, c.o.Username = ep, "weft"
			err := connect(t, c.o)
			wantErr(t, err, c.want...)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

// A password crossing an endpoint without TLS is reported so that weftd can
// warn; none is reported without a password, or over https.
func TestPlaintextEndpoints(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Endpoints: "http://a:2379,https://b:2379", Password: "x"}, "[http://a:2379]"},
		{Options{Endpoints: "http://a:2379", PasswordFile: "/f"}, "[http://a:2379]"},
		{Options{Endpoints: "a:2379", Password: "x"}, "[a:2379]"},
		{Options{Endpoints: "a:2379", Password: "x", CAFile: "/ca.pem"}, "[]"},
		{Options{Endpoints: "https://a:2379", Password: "x"}, "[]"},
		{Options{Endpoints: "http://a:2379"}, "[]"},
	} {
		if got := fmt.Sprint(c.o.PlaintextEndpoints()); got != c.want {
			t.Errorf("%+v: PlaintextEndpoints %s, want %s", c.o, got, c.want)
		}
	}
}
