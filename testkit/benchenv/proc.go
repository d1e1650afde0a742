package benchenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServeNATS is the body of a benchmark's nats-server child process, so
// that the server's CPU is counted apart from the benchmark's: it starts
// nats-server with opts (StartNATS), writes its client URL and a newline
// to out, and stops when in reaches EOF (the parent closed the pipe).
func ServeNATS(opts server.Options, in io.Reader, out io.Writer) error {
	ns, stop, err := StartNATS(opts)
	if err != nil {
		return err
	}
	defer stop()
	if _, err := fmt.Fprintln(out, ns.ClientURL()); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in)
	return nil
}

// NATSChild is a nats-server in a child process of the benchmark (this
// binary run in a role that calls ServeNATS), as in production: its CPU
// and memory are its own, apart from the client's under test.
type NATSChild struct {
	URL   string // client URL on loopback
	Pid   int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// StartNATSChild runs this binary with args (which must make it call
// ServeNATS) and waits for the client URL it prints. Its stderr is ours.
func StartNATSChild(ctx context.Context, args ...string) (*NATSChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &NATSChild{Pid: cmd.Process.Pid, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("nats-server child: no URL: %w", err)
	}
	c.URL = strings.TrimSpace(line)
	return c, nil
}

// BenchNATS is a benchmark's nats-server: a child process (Child set),
// as in production, or embedded in the benchmark's own process.
type BenchNATS struct {
	URL   string
	Child *NATSChild // nil when embedded
	stop  func()
}

// StartBenchNATS starts a benchmark's nats-server: with child set, this
// binary run with childArgs (a role that calls ServeNATS with the same
// options); otherwise embedded with opts (StartNATS).
func StartBenchNATS(ctx context.Context, opts server.Options, child bool, childArgs ...string) (*BenchNATS, error) {
	if child {
		c, err := StartNATSChild(ctx, childArgs...)
		if err != nil {
			return nil, err
		}
		return &BenchNATS{URL: c.URL, Child: c, stop: c.Stop}, nil
	}
	ns, stop, err := StartNATS(opts)
	if err != nil {
		return nil, err
	}
	return &BenchNATS{URL: ns.ClientURL(), stop: stop}, nil
}

// Stop shuts the server down and waits for it.
func (n *BenchNATS) Stop() { n.stop() }

// CPU is the child's CPU time so far; 0 when embedded (the server's CPU
// is then the benchmark process's own).
func (n *BenchNATS) CPU() time.Duration {
	if n.Child == nil {
		return 0
	}
	return time.Duration(n.Child.CPUSeconds() * float64(time.Second))
}

// CPUSeconds is the child's user+system CPU time so far.
func (c *NATSChild) CPUSeconds() float64 { return CPUSeconds(c.Pid) }

// Stop closes the child's stdin (ServeNATS then shuts the server down)
// and waits for it to exit; after 30 s it is killed.
func (c *NATSChild) Stop() {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// CPUSeconds is the user+system CPU time of process pid so far, from
// /proc (Linux); 0 when it cannot be read.
func CPUSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which ends with ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// RSS is the resident set size of process pid in bytes, from /proc
// (Linux); 0 when it cannot be read.
func RSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// MachineBusySeconds is the CPU time every core of the machine has spent
// busy so far (user, nice, system, irq, softirq and steal in the first
// line of /proc/stat: everything but idle and iowait), for work no
// process's own figure counts, such as the kernel's network processing
// and write-back; 0 when it cannot be read.
func MachineBusySeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / 100 // USER_HZ
}
