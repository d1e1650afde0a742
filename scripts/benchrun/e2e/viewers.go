package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"trm-live/scripts/devauth"
	"trm-live/testkit/benchenv"
)

// viewerResult is what a viewer process reports on stdout at the end.
type viewerResult struct {
	Counts   []uint64 `json:"counts"`
	N        uint64   `json:"n"`
	MaxNS    int64    `json:"max_ns"`
	Received []int64  `json:"received"`  // per viewer: window positions received
	Closed   int      `json:"closed"`    // connections that ended before the parent's stop
	CloseErr string   `json:"close_err"` // one of their errors
}

// viewerMain is the child role: log in viewers first..first+n-1, connect,
// subscribe, print "ready"; read "window <start ns> <end ns>" on stdin;
// measure every position whose attrs.sent lies in the window; at stdin EOF
// close and print the result as JSON.
func viewerMain(args []string) error {
	fs := flag.NewFlagSet("viewers", flag.ContinueOnError)
	directusURL := fs.String("directus", "", "auth backend URL")
	wsURL := fs.String("ws", "", "ws://…/ws-live")
	event := fs.String("event", "", "event id")
	first := fs.Int("first", 0, "first viewer index")
	n := fs.Int("n", 1, "viewers")
	rcvbuf := fs.Int("rcvbuf", 0, "SO_RCVBUF per connection, 0 = autotuning")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	type viewer struct {
		conn     *benchenv.RawConn
		h        *hist
		received int64
	}
	viewers := make([]*viewer, *n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var connErr atomic.Value
	for i := range viewers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			u := devauth.User{Email: fmt.Sprintf("viewer%d@bench.local", *first+i), Password: "pw"}
			c, err := connectViewer(ctx, *directusURL, *wsURL, u, *event, *rcvbuf)
			if err != nil {
				connErr.Store(err)
				return
			}
			viewers[i] = &viewer{conn: c, h: newHist()}
		}()
	}
	wg.Wait()
	if err, _ := connErr.Load().(error); err != nil {
		return err
	}
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read window: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "window" {
		return fmt.Errorf("bad window line %q", line)
	}
	ws, _ := strconv.ParseInt(f[1], 10, 64)
	we, _ := strconv.ParseInt(f[2], 10, 64)

	key := []byte(`{"sent":`) // attrs; "{" is rare in a frame: a fast first-byte search
	var stopping atomic.Bool
	var closed atomic.Int64
	var closeErr atomic.Value
	var readers sync.WaitGroup
	for _, v := range viewers {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				data, err := v.conn.ReadMessage()
				if err != nil {
					if !stopping.Load() {
						closed.Add(1)
						closeErr.Store(err.Error())
					}
					return
				}
				now := time.Now().UnixNano()
				if !bytes.HasPrefix(data, []byte(`{"type":"positions"`)) {
					continue
				}
				off := 0
				for {
					i := bytes.Index(data[off:], key)
					if i < 0 {
						break
					}
					off += i + len(key)
					var sent int64
					for off < len(data) && data[off] >= '0' && data[off] <= '9' {
						sent = sent*10 + int64(data[off]-'0')
						off++
					}
					if sent >= ws && sent < we {
						v.h.add(time.Duration(now - sent))
						v.received++
					}
				}
			}
		}()
	}
	_, _ = io.Copy(io.Discard, in) // until the parent closes stdin
	stopping.Store(true)
	for _, v := range viewers {
		v.conn.Close()
	}
	readers.Wait()
	total := newHist()
	res := viewerResult{}
	for _, v := range viewers {
		total.merge(v.h)
		res.Received = append(res.Received, v.received)
	}
	res.Counts, res.N, res.MaxNS = total.counts, total.n, int64(total.max)
	res.Closed = int(closed.Load())
	if e, ok := closeErr.Load().(string); ok {
		res.CloseErr = e
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// viewerProc is the parent's handle on one viewer process.
type viewerProc struct {
	proc *workerProc
	out  *bufio.Reader
}

func startViewers(ctx context.Context, e scenarioEnv, first, n int) (*viewerProc, error) {
	p, out, err := startChild(ctx, fmt.Sprintf("viewers-%d", first/500+1), "-role=viewers", "-directus", e.directusURL, "-ws", e.wsURL,
		"-event", e.db.eventID, "-first", strconv.Itoa(first), "-n", strconv.Itoa(n), "-rcvbuf", strconv.Itoa(e.rcvbuf))
	if err != nil {
		return nil, err
	}
	return &viewerProc{proc: p, out: out}, nil
}

func (v *viewerProc) waitReady(timeout time.Duration) error {
	line := make(chan string, 1)
	go func() {
		s, _ := v.out.ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "ready" {
			return fmt.Errorf("%s: not ready (%q); see stderr above", v.proc.name, s)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: not ready after %s", v.proc.name, timeout)
	}
}

func (v *viewerProc) setWindow(start, end time.Time) error {
	_, err := fmt.Fprintf(v.proc.stdin, "window %d %d\n", start.UnixNano(), end.UnixNano())
	return err
}

func (v *viewerProc) finish() (viewerResult, error) {
	var r viewerResult
	_ = v.proc.stdin.Close()
	if err := json.NewDecoder(v.out).Decode(&r); err != nil {
		return r, fmt.Errorf("%s result: %w", v.proc.name, err)
	}
	<-v.proc.done
	return r, nil
}

func (v *viewerProc) kill() {
	select {
	case <-v.proc.done:
	default:
		_ = v.proc.cmd.Process.Kill()
		<-v.proc.done
	}
}
