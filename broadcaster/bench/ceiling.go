package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract"
	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
)

// ceiling is a bare fan-out of recorded frames, as the load process
// measured it.
type ceiling struct {
	Frames          int64   `json:"frames"`
	Positions       int64   `json:"positions"`
	Secs            float64 `json:"secs"` // first frame received to the last
	PositionsPerSec float64 `json:"positions_per_sec"`
	LoadCPU         float64 `json:"load_cpu"`
	ServerCPUSec    float64 `json:"-"` // the raw server's CPU seconds for it
}

// blastRequest is the body of POST /blast: write the frames of File
// (recorded by the load process) to connection i Counts[i] times in turn,
// starting at frame i.
type blastRequest struct {
	File   string `json:"file"`
	Counts []int  `json:"counts"`
}

// runRaw is a bare WebSocket server: no auth, no mailbox, no encoding per
// client. GET /raw?i=N registers a client; GET /clients counts them. POST /blast writes recorded
// frames (blastRequest); POST /blast?per=N&dur=D writes one synthetic
// frame of N positions to every client as fast as the socket takes it for
// D.
func runRaw(ctx context.Context, addr string) error {
	var mu sync.Mutex
	conns := map[*websocket.Conn]int{}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/clients", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(w, len(conns))
	})
	mux.HandleFunc("/raw", func(w http.ResponseWriter, r *http.Request) {
		i := -1
		if s := r.URL.Query().Get("i"); s != "" {
			i, _ = strconv.Atoi(s)
		}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		mu.Lock()
		conns[conn] = i
		mu.Unlock()
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				break
			}
		}
		mu.Lock()
		delete(conns, conn)
		mu.Unlock()
		conn.Close()
	})
	mux.HandleFunc("/blast", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		list := make(map[*websocket.Conn]int, len(conns))
		for c, i := range conns {
			list[c] = i
		}
		mu.Unlock()
		var err error
		if per := r.URL.Query().Get("per"); per != "" {
			err = blastSynthetic(list, per, r.URL.Query().Get("dur"))
		} else {
			var req blastRequest
			if err = json.NewDecoder(r.Body).Decode(&req); err == nil {
				err = blastRecorded(list, req)
			}
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		_, _ = w.Write([]byte("done"))
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func blastSynthetic(conns map[*websocket.Conn]int, perS, durS string) error {
	per, _ := strconv.Atoi(perS)
	d, _ := time.ParseDuration(durS)
	items := make([][]byte, per)
	for i := range items {
		p := contract.Position{DeviceID: fmt.Sprintf("d%05d", i), EventID: "0b5e7c1e-0000-4000-8000-00000000beef", TS: time.Now().UTC(),
			Lat: 45.1, Lon: 7.6, Speed: &speed, Heading: &heading, Sats: &sats}
		items[i] = p.Encode()
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, ws.AppendPositions(nil, "event:0b5e7c1e-0000-4000-8000-00000000beef", items))
	if err != nil {
		return err
	}
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			for time.Now().Before(end) {
				_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := c.WritePreparedMessage(pm); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return nil
}

func blastRecorded(conns map[*websocket.Conn]int, req blastRequest) error {
	frames, err := readFrames(req.File)
	if err != nil {
		return err
	}
	if len(frames) == 0 {
		return errors.New("no recorded frames")
	}
	pms := make([]*websocket.PreparedMessage, len(frames))
	for i, f := range frames {
		if pms[i], err = websocket.NewPreparedMessage(websocket.TextMessage, f); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	for c, i := range conns {
		if i < 0 || i >= len(req.Counts) {
			continue
		}
		wg.Go(func() {
			for k := range req.Counts[i] {
				_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := c.WritePreparedMessage(pms[(i+k)%len(pms)]); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// writeFrames stores frames as length-prefixed records.
func writeFrames(path string, frames [][]byte) error {
	var b bytes.Buffer
	for _, f := range frames {
		b.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		b.Write(f)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func readFrames(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%s: truncated", path)
		}
		n := int(binary.BigEndian.Uint32(b))
		if len(b) < 4+n {
			return nil, fmt.Errorf("%s: truncated", path)
		}
		out = append(out, b[4:4+n])
		b = b[4+n:]
	}
	return out, nil
}

// rawRun is the synthetic reference: per positions per frame, one frame
// written to n clients as fast as they take it for the window.
func (c *coord) rawRun(n, per int) (result, error) {
	l, err := c.startLoad("ws://"+c.rawAddr+"/raw", n, "raw", 0)
	if err != nil {
		return result{}, err
	}
	defer l.finish()
	l.send("GO")
	resp, err := http.Post(fmt.Sprintf("http://%s/blast?per=%d&dur=%s", c.rawAddr, per, c.cfg.Duration), "text/plain", nil)
	if err != nil {
		return result{}, err
	}
	resp.Body.Close()
	l.send("END")
	line, err := l.expect("RESULT")
	if err != nil {
		return result{}, err
	}
	var r result
	return r, json.Unmarshal([]byte(line), &r)
}

// save has the load process write the frames one client received in the
// last window to a file, and returns it with every client's frame count.
func (c *coord) save(l *load) (string, []int, error) {
	c.files++
	file := filepath.Join(c.dataDir, fmt.Sprintf("broadcaster-frames-%d", c.files%2))
	l.send("SAVE " + file)
	line, err := l.expect("SAVED")
	if err != nil {
		return "", nil, err
	}
	var counts []int
	return file, counts, json.Unmarshal([]byte(line), &counts)
}

// fanOut has the raw server write the recorded frames to the load
// process's raw connections, counts[i] to client i, and returns what the
// load process received.
func (c *coord) fanOut(l *load, file string, counts []int) (ceiling, error) {
	total := 0
	for _, n := range counts {
		total += n
	}
	l.send("RAWGO")
	if _, err := l.expect("RAWREADY"); err != nil {
		return ceiling{}, err
	}
	cpu0 := benchenv.CPUSeconds(c.rawCmd.Process.Pid)
	body, _ := json.Marshal(blastRequest{File: file, Counts: counts})
	resp, err := http.Post("http://"+c.rawAddr+"/blast", "application/json", bytes.NewReader(body))
	if err != nil {
		return ceiling{}, err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return ceiling{}, fmt.Errorf("blast: %d %s", resp.StatusCode, msg)
	}
	cpu1 := benchenv.CPUSeconds(c.rawCmd.Process.Pid)
	l.send(fmt.Sprintf("RAWWAIT %d", total))
	line, err := l.expect("RAWRESULT")
	if err != nil {
		return ceiling{}, err
	}
	var r ceiling
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return ceiling{}, err
	}
	r.ServerCPUSec = cpu1 - cpu0
	if r.Frames < int64(total) {
		fmt.Printf("        warning: the fan-out delivered %d of %d frames\n", r.Frames, total)
	}
	return r, nil
}
