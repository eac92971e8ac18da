// Package blobtest starts stand-ins for the cloud object stores, each
// speaking its cloud's real wire protocol on loopback, so that tests run
// internal/blob's real drivers (gocloud.dev's s3blob, gcsblob, azureblob)
// against them: S3 is github.com/johannesboyne/gofakes3 and GCS is
// github.com/fsouza/fake-gcs-server, both in the test process; Azure Blob
// is Azurite, the Azure Storage emulator, run as a process (installed by
// .ci/run under build/azurite).
//
// Only tests import this package; the spotml binary never links the fakes.
package blobtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// BucketName returns a fresh name that S3, GCS and Azure all accept (3 to
// 63 lower-case letters, digits and hyphens).
func BucketName() string {
	var b [6]byte
	rand.Read(b[:])
	return "spotml-" + hex.EncodeToString(b[:])
}

// S3Env is the environment that an S3 client of the S3 stand-in needs:
// static credentials (the stand-in accepts any), so that the AWS default
// chain does not go looking for an instance role.
var S3Env = []string{
	"AWS_ACCESS_KEY_ID=spotml-test",
	"AWS_SECRET_ACCESS_KEY=spotml-test-secret",
	"AWS_REGION=us-east-1",
	"AWS_EC2_METADATA_DISABLED=true",
}

// S3 is an in-process S3 server.
type S3 struct {
	// Endpoint is the server's base URL, http://127.0.0.1:PORT.
	Endpoint string
	backend  *s3mem.Backend
}

// StartS3 starts an S3 server on loopback until the test ends and sets
// S3Env in the test's environment.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	setenv(t, S3Env)
	backend := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	return &S3{Endpoint: srv.URL, backend: backend}
}

// Bucket creates a bucket and returns its URL with the options that point
// s3blob at this server.
func (s *S3) Bucket(t testing.TB) string {
	t.Helper()
	name := BucketName()
	if err := s.backend.CreateBucket(name); err != nil {
		t.Fatal(err)
	}
	return s.URL(name)
}

// URL returns the URL of bucket name on this server.
func (s *S3) URL(name string) string {
	// response_checksum_validation: the stand-in sends no checksums, which
	// the SDK would warn about on every read.
	q := url.Values{"endpoint": {s.Endpoint}, "use_path_style": {"true"}, "region": {"us-east-1"}, "response_checksum_validation": {"when_required"}}
	return "s3://" + name + "?" + q.Encode()
}

// GCS is an in-process Google Cloud Storage server (JSON API).
type GCS struct {
	// Host is the server's HOST:PORT, the value of STORAGE_EMULATOR_HOST.
	Host string
	srv  *fakestorage.Server
}

// StartGCS starts a GCS server on loopback until the test ends and sets
// STORAGE_EMULATOR_HOST in the test's environment, which is how Google's
// client libraries (and gcsblob) are pointed at an emulator.
func StartGCS(t testing.TB) *GCS {
	t.Helper()
	// PublicHost: the Go client reads objects through the XML API, path
	// style (http://HOST:PORT/BUCKET/OBJECT), which the fake serves only
	// for requests to its public host.
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0, PublicHost: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	setenv(t, []string{"STORAGE_EMULATOR_HOST=" + u.Host})
	return &GCS{Host: u.Host, srv: srv}
}

// Bucket creates a bucket and returns its gs:// URL.
func (g *GCS) Bucket(t testing.TB) string {
	t.Helper()
	name := BucketName()
	g.srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: name})
	return "gs://" + name
}

// The well-known development account every Azurite has (Microsoft's
// documentation publishes it; it guards nothing).
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azurite is an Azurite blob service, one per test binary.
type Azurite struct {
	// Host is HOST:PORT of the blob endpoint.
	Host string
	cmd  *exec.Cmd
	dir  string
	done chan struct{}
}

var (
	azuriteOnce sync.Once
	azurite     *Azurite
	azuriteErr  error
)

// StartAzurite returns the test binary's Azurite, starting it on a free
// loopback port over a temporary directory the first time, and sets the
// account and key in the test's environment. Without an Azurite installed
// (build/azurite, or SPOTML_AZURITE naming azurite-blob) the test is
// skipped, or fails when SPOTML_REQUIRE_AZURITE=1. Call StopAzurite from
// TestMain.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	azuriteOnce.Do(func() { azurite, azuriteErr = startAzurite() })
	if azuriteErr != nil {
		if errors.Is(azuriteErr, errNoAzurite) && os.Getenv("SPOTML_REQUIRE_AZURITE") != "1" {
			t.Skip(azuriteErr)
		}
		t.Fatal(azuriteErr)
	}
	setenv(t, []string{
		"AZURE_STORAGE_ACCOUNT=" + AzuriteAccount,
		"AZURE_STORAGE_KEY=" + AzuriteKey,
		"AZURE_STORAGE_SAS_TOKEN=",
		"AZURE_STORAGE_CONNECTION_STRING=",
	})
	return azurite
}

// StopAzurite stops the Azurite that StartAzurite started, if any, and
// removes its data.
func StopAzurite() {
	if azurite == nil {
		return
	}
	azurite.cmd.Process.Kill()
	<-azurite.done
	os.RemoveAll(azurite.dir)
	azurite = nil
}

// URL returns the azblob:// URL of container name, with the options that
// point azureblob at this Azurite.
func (a *Azurite) URL(name string) string {
	q := url.Values{"localemu": {"true"}, "protocol": {"http"}, "domain": {a.Host}}
	return "azblob://" + name + "?" + q.Encode()
}

// Bucket creates a container and returns its URL.
func (a *Azurite) Bucket(t testing.TB) string {
	t.Helper()
	name := BucketName()
	cred, err := container.NewSharedKeyCredential(AzuriteAccount, AzuriteKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential("http://"+a.Host+"/"+AzuriteAccount+"/"+name, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Create(ctx, nil); err != nil {
		t.Fatalf("create Azurite container %s: %v", name, err)
	}
	return a.URL(name)
}

var errNoAzurite = errors.New("Azurite is not installed: run `npm install --prefix build/azurite azurite@3.35.0` (as .ci/run does) or set SPOTML_AZURITE to its azurite-blob")

// azuriteBinary finds azurite-blob: SPOTML_AZURITE, or build/azurite in
// the module root above the working directory.
func azuriteBinary() (string, error) {
	if p := os.Getenv("SPOTML_AZURITE"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "build", "azurite", "node_modules", ".bin", "azurite-blob")
			if _, err := os.Stat(p); err != nil {
				return "", errNoAzurite
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errNoAzurite
		}
		dir = parent
	}
}

func startAzurite() (*Azurite, error) {
	bin, err := azuriteBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "spotml-azurite-")
	if err != nil {
		return nil, err
	}
	// The free port is found by listening and closing, so another process
	// could take it first; a few tries make that harmless.
	var last error
	for try := 0; try < 3; try++ {
		a, err := runAzurite(bin, dir)
		if err == nil {
			return a, nil
		}
		last = err
	}
	os.RemoveAll(dir)
	return nil, last
}

func runAzurite(bin, dir string) (*Azurite, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.Create(filepath.Join(dir, "azurite.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// --skipApiVersionCheck: the Go SDK may speak a newer service version
	// than this Azurite knows; the blob operations spotml uses are old.
	cmd := exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port),
		"--location", dir, "--silent", "--skipApiVersionCheck", "--loose")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary even if TestMain never gets to stop it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start Azurite (%s): %w", bin, err)
	}
	a := &Azurite{Host: host, cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { cmd.Wait(); close(a.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("Azurite exited at start: %s", log)
		default:
		}
		if c, err := net.DialTimeout("tcp", host, 200*time.Millisecond); err == nil {
			c.Close()
			return a, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Kill()
	<-a.done
	return nil, fmt.Errorf("Azurite did not listen on %s within 60s", host)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// setenv sets KEY=VALUE pairs for the rest of the test.
func setenv(t testing.TB, kv []string) {
	for _, e := range kv {
		k, v, _ := strings.Cut(e, "=")
		t.Setenv(k, v)
	}
}
