package benchenv

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

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
