package benchenv

import (
	"bufio"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServeNATS writes a URL a client can connect to, and returns once its
// input ends.
func TestServeNATS(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- ServeNATS(server.Options{}, inR, outW) }()
	url, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(strings.TrimSpace(url))
	if err != nil {
		t.Fatalf("connect %q: %v", url, err)
	}
	nc.Close()
	_ = inW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// This process has used some CPU and holds some memory; a process that
// does not exist reads as zero.
func TestCPUSecondsAndRSS(t *testing.T) {
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	_ = x
	if c := CPUSeconds(os.Getpid()); c <= 0 {
		t.Fatalf("CPUSeconds(self) = %g", c)
	}
	if r := RSS(os.Getpid()); r < 1<<20 {
		t.Fatalf("RSS(self) = %d", r)
	}
	if CPUSeconds(-1) != 0 || RSS(-1) != 0 {
		t.Fatal("a missing process reads as nonzero")
	}
}

// StartNATSChild starts this test binary as a nats-server child (the
// role below), connects, and Stop ends the child.
func TestStartNATSChild(t *testing.T) {
	t.Setenv("BENCHENV_TEST_NATS_CHILD", t.TempDir())
	c, err := StartNATSChild(t.Context(), "-test.run=^TestNATSChildRole$")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(c.URL)
	if err != nil {
		c.Stop()
		t.Fatalf("connect %q: %v", c.URL, err)
	}
	nc.Close()
	if c.Pid == os.Getpid() {
		t.Fatalf("child pid %d is this process", c.Pid)
	}
	c.Stop()
	select {
	case <-c.done:
	default:
		t.Fatal("child still running after Stop")
	}
}

// TestNATSChildRole is the child of TestStartNATSChild, not a test of its
// own: it serves only when that test started it.
func TestNATSChildRole(t *testing.T) {
	store := os.Getenv("BENCHENV_TEST_NATS_CHILD")
	if store == "" {
		return
	}
	if err := ServeNATS(server.Options{JetStream: true, StoreDir: store}, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// StartBenchNATS embeds the server (no child, CPU read as 0) or starts
// it as a child (its pid, its CPU); a client connects to either.
func TestStartBenchNATS(t *testing.T) {
	t.Setenv("BENCHENV_TEST_NATS_CHILD", t.TempDir())
	for _, child := range []bool{false, true} {
		n, err := StartBenchNATS(t.Context(), server.Options{}, child, "-test.run=^TestNATSChildRole$")
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(n.URL)
		if err != nil {
			n.Stop()
			t.Fatalf("child %v: connect %q: %v", child, n.URL, err)
		}
		nc.Close()
		if (n.Child != nil) != child || (!child && n.CPU() != 0) {
			t.Errorf("child %v: Child %v, CPU %s", child, n.Child, n.CPU())
		}
		n.Stop()
	}
}
