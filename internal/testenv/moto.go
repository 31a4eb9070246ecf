package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
)

// Moto is a moto_server (the Python AWS mock) serving Secrets Manager on a
// loopback port for one test.
type Moto struct {
	Endpoint string                 // e.g. http://127.0.0.1:40123
	Client   *secretsmanager.Client // static test credentials, region us-east-1
}

// Region and credentials the moto client uses; moto accepts any credentials.
const (
	MotoRegion    = "us-east-1"
	MotoAccessKey = "testing"
	MotoSecretKey = "testing"
)

// StartMoto starts moto_server on a free loopback port, waits until it
// answers, and stops it when the test ends.
func StartMoto(t testing.TB) *Moto {
	t.Helper()
	bin := RequireTool(t, "moto_server", "pip install 'moto[server]'")
	// A free port can be taken between FreePort and moto's bind; try again
	// with another port rather than fail the test.
	var lastErr error
	for try := 0; try < 3; try++ {
		m, err := startMoto(t, bin)
		if err == nil {
			return m
		}
		lastErr = err
	}
	t.Fatalf("starting moto_server: %v", lastErr)
	return nil
}

func startMoto(t testing.TB, bin string) (*Moto, error) {
	port := strconv.Itoa(FreePort(t))
	logPath := filepath.Join(t.TempDir(), "moto.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", port)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: pyenv shims and werkzeug may leave children,
	// and cleanup must end all of them and nothing else.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	}

	addr := net.JoinHostPort("127.0.0.1", port)
	// Python startup on a busy 2-core machine can take several seconds.
	deadline := time.Now().Add(45 * time.Second)
	for {
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("moto_server exited early (%v); its output:\n%s", err, out)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			out, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("moto_server did not listen on %s within 45s; its output:\n%s", addr, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Cleanup(stop)

	endpoint := "http://" + addr
	client := secretsmanager.New(secretsmanager.Options{
		Region:       MotoRegion,
		BaseEndpoint: aws.String(endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: MotoAccessKey, SecretAccessKey: MotoSecretKey, Source: "testenv"}, nil
		}),
	})
	return &Moto{Endpoint: endpoint, Client: client}, nil
}

// Put creates the secret or stores a new version of it, and returns the new
// VersionId.
func (m *Moto) Put(t testing.TB, name, value string) (versionID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := m.Client.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String(name), SecretString: aws.String(value)})
	if err == nil {
		return aws.ToString(out.VersionId)
	}
	var exists *types.ResourceExistsException
	if !errors.As(err, &exists) {
		t.Fatalf("creating secret %q in moto: %v", name, err)
	}
	put, err := m.Client.PutSecretValue(ctx, &secretsmanager.PutSecretValueInput{SecretId: aws.String(name), SecretString: aws.String(value)})
	if err != nil {
		t.Fatalf("putting a new version of secret %q in moto: %v", name, err)
	}
	return aws.ToString(put.VersionId)
}
