package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// selfSigned writes a certificate and key for 127.0.0.1 and returns their
// paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ferry test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestShutdownDelay: with --shutdown-delay, the first signal has
// /healthz answer 503 while the server goes on serving, until the delay
// ends or a second signal cuts it short; then it stops as usual.
func TestShutdownDelay(t *testing.T) {
	signalled, cancel := context.WithCancelCause(context.Background())
	signal := func() { cancel(stopSignal{syscall.SIGTERM}) } // as stopContexts does
	hurry, secondSignal := context.WithCancel(context.Background())
	defer signal()
	defer secondSignal()
	logs := &syncBuffer{w: make(chan struct{}, 1)}
	url, done := serving(t, withHurry(signalled, hurry, context.Background()), []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--shutdown-delay", "1h", "--log-level", "info"}, logs)
	health := func() int {
		t.Helper()
		resp, err := http.Get(url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := health(); got != http.StatusOK {
		t.Fatalf("healthz before the signal: %d", got)
	}
	signal()
	for !strings.Contains(logs.String(), "draining") {
		select {
		case <-logs.w:
		case err := <-done:
			t.Fatalf("ferryd stopped without draining: %v\n%s", err, logs.String())
		}
	}
	if got := health(); got != http.StatusServiceUnavailable {
		t.Fatalf("healthz while draining: %d, want 503 from a server still serving", got)
	}
	secondSignal()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "cut short") || !strings.Contains(logs.String(), "stopped") || !strings.Contains(logs.String(), `reason="signal: terminated"`) {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

// stalledCall opens a call to url whose body stalls after three bytes of
// a hundred, once its handler reads it, and returns a function that sends
// the rest and the answer's status line.
func stalledCall(t *testing.T, url string) (finish func() (string, error)) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /ferry.v1.AccountService/Login HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/proto\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
	r := bufio.NewReader(c)
	// 100 Continue: the handler reads the body, which then stalls.
	for line := ""; line != "\r\n"; {
		if line, err = r.ReadString('\n'); err != nil {
			t.Fatalf("waiting for 100 Continue: %v", err)
		}
		if strings.HasPrefix(line, "HTTP/1.1 ") && !strings.Contains(line, "100 Continue") {
			t.Fatalf("%q, want 100 Continue", line)
		}
	}
	fmt.Fprint(c, "abc")
	return func() (string, error) {
		fmt.Fprint(c, strings.Repeat("x", 97))
		return r.ReadString('\n')
	}
}

// TestSignalsCutOneWaitEach: as the server stops, each signal after the
// first cuts one wait short, the one under way: the second
// --shutdown-delay, and then the calls under way go on (here one whose
// body stalls, then is sent, and answered) until a third cuts the wait
// for them; without a delay, the second cuts that wait.
func TestSignalsCutOneWaitEach(t *testing.T) {
	for _, delay := range []bool{true, false} {
		t.Run(fmt.Sprint("delay ", delay), func(t *testing.T) {
			signalled, cancel := context.WithCancelCause(context.Background())
			signal := func() { cancel(stopSignal{syscall.SIGTERM}) } // as stopContexts does
			second, secondSignal := context.WithCancel(context.Background())
			third, thirdSignal := context.WithCancel(context.Background())
			defer signal()
			defer secondSignal()
			defer thirdSignal()
			logs := &syncBuffer{w: make(chan struct{}, 1)}
			args := []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--log-level", "info"}
			if delay {
				args = append(args, "--shutdown-delay", "1h")
			}
			url, done := serving(t, withHurry(signalled, second, third), args, logs)
			logged := func(what string) {
				t.Helper()
				for !strings.Contains(logs.String(), what) {
					select {
					case <-logs.w:
					case err := <-done:
						t.Fatalf("ferryd stopped before it logged %q: %v\n%s", what, err, logs.String())
					}
				}
			}
			answered, cut := stalledCall(t, url), stalledCall(t, url)
			signal()
			cutWait := secondSignal
			if delay {
				logged("draining")
				secondSignal()
				cutWait = thirdSignal
			}
			logged("shutting down")
			// The wait for the calls under way goes on: a call's body
			// that comes now is read, and the call answered.
			if line, err := answered(); err != nil || !strings.HasPrefix(line, "HTTP/1.1 ") {
				t.Fatalf("a call under way as the server stops: %q, %v; want it answered", line, err)
			}
			cutWait()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), "shutdown cut short by another signal") || !strings.Contains(logs.String(), "stopped") {
				t.Fatalf("logs:\n%s", logs.String())
			}
			if _, err := cut(); err == nil {
				t.Fatal("the call still under way was answered, not cut")
			}
		})
	}
}

// TestServeTLS: ferryd serves HTTP/2 over TLS, and on SIGHUP serves the
// certificate its files hold then (a renewed one) without a restart.
func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{w: make(chan struct{}, 1)}
	url, done := serving(t, ctx, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--tls-cert", certFile, "--tls-key", keyFile, "--log-level", "info"}, logs)
	get := func(pool *x509.CertPool) error {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
		defer client.CloseIdleConnections()
		resp, err := client.Get(url + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("healthz over TLS: %d %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
		}
		return nil
	}
	if err := get(pool); err != nil {
		t.Fatal(err)
	}

	// A renewed certificate in the same files, then SIGHUP.
	newCert, newKey, newPool := selfSigned(t)
	for from, to := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sendSIGHUP(t)
	for !strings.Contains(logs.String(), "TLS certificate reloaded") {
		select {
		case <-logs.w:
		case err := <-done:
			t.Fatalf("ferryd exited on SIGHUP: %v\n%s", err, logs.String())
		}
	}
	if err := get(newPool); err != nil {
		t.Fatalf("the renewed certificate: %v", err)
	}
	if err := get(pool); err == nil {
		t.Fatal("the old certificate is still served")
	}
	// The client refused the certificate: the first failed handshake is
	// logged at WARN, saying so (net/http's line, read by the server).
	for wait := time.After(time.Minute); !strings.Contains(logs.String(), `level=WARN msg="TLS handshake failed`); {
		select {
		case <-logs.w:
		case <-wait:
			t.Fatalf("no warning of the failed TLS handshake in a minute:\n%s", logs.String())
		}
	}
	if l := logs.String(); !strings.Contains(l, "bad certificate") && !strings.Contains(l, "unknown certificate") {
		t.Fatalf("the warning does not say why the handshake failed:\n%s", l)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--tls-cert", certFile}, io.Discard, io.Discard); err == nil {
		t.Fatal("--tls-cert without --tls-key was accepted")
	}
}
