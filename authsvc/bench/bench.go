// Command bench benchmarks the authsvc worker (scripts/bench authsvc).
//
// Phase 1, the race-start storm: N session validations over C distinct
// cookies in one burst, against a Directus stand-in that answers every call
// after a fixed latency. It prints the Directus calls made, the answer
// latency (p50/p99/max) and the cache and singleflight counters.
//
// Phase 2, cached throughput: W concurrent requesters validate the (now
// cached) cookies over NATS for a fixed time, beside a raw NATS
// request/reply echo measured in the same run with the same requesters:
// the ceiling. It prints both rates and their ratio.
//
// Directus is the repository's one fake (testkit/directus), with C users
// logged in (real session JWTs as cookies) and a fixed answer latency.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/authsvc"
	"trm-live/contract/auth"
	"trm-live/testkit/benchenv"
	"trm-live/testkit/directus"
)

// Config is one benchmark run: the flags of scripts/bench authsvc, and the
// servers scripts/bench started.
type Config struct {
	Storm   int           // session validations in the storm burst
	Creds   int           // distinct credentials in the storm
	Latency time.Duration // Directus stand-in answer latency
	// Workers concurrent requesters share Conns NATS connections in the
	// throughput phase: Rounds rounds of echo then cached, Duration each.
	Workers, Conns, Rounds int
	Duration               time.Duration
	DirectusConcurrency    int    // AUTHSVC_DIRECTUS_CONCURRENCY (0: authsvc's default)
	CPUProfile             string // a CPU profile of the throughput phase, when set
	// DatabaseURL is where the benchmark creates authsvc's database;
	// DataDir holds the NATS store.
	benchenv.Servers
}

// LoadConfig reads the flags in args and the servers from getenv.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var o Config
	fs := flag.NewFlagSet("bench authsvc", flag.ContinueOnError)
	fs.IntVar(&o.Storm, "n", 5000, "session validations in the storm burst")
	fs.IntVar(&o.Creds, "creds", 1000, "distinct credentials in the storm")
	fs.DurationVar(&o.Latency, "latency", 20*time.Millisecond, "Directus stand-in answer latency")
	fs.IntVar(&o.Workers, "workers", 256, "concurrent requesters in the throughput phase")
	fs.IntVar(&o.Conns, "conns", 4, "NATS connections the requesters share")
	fs.IntVar(&o.Rounds, "rounds", 3, "throughput rounds (echo then cached, alternating)")
	fs.DurationVar(&o.Duration, "duration", 3*time.Second, "length of each throughput measurement")
	fs.IntVar(&o.DirectusConcurrency, "directus-concurrency", 0, "AUTHSVC_DIRECTUS_CONCURRENCY (0: authsvc's default, 64)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the throughput phase to this file")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	o.Servers, err = benchenv.LoadServers(getenv, "authsvc", benchenv.EnvDatabaseURL)
	return o, err
}

// Run measures the storm, then the cached throughput against the echo.
func Run(ctx context.Context, o Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dataDir := o.DataDir

	// NATS, embedded.
	store := filepath.Join(dataDir, "authsvc-nats")
	_ = os.RemoveAll(store)
	ns, stopNATS, err := benchenv.StartNATS(server.Options{StoreDir: store})
	if err != nil {
		return err
	}
	defer stopNATS()

	// A database for authsvc (the session path never queries it).
	dsn, err := benchenv.FreshDatabase(ctx, o.DatabaseURL, "bench_authsvc")
	if err != nil {
		return err
	}

	// Directus: the fake, with o.Creds users logged in.
	dir, tokens, err := startDirectus(o.Creds, o.Latency)
	if err != nil {
		return err
	}
	defer dir.Stop()
	token := func(i int) string { return tokens[i] }

	// authsvc, in process, with its defaults except a TTL that outlives the
	// run.
	reg := prometheus.NewRegistry()
	svcCtx, stopSvc := context.WithCancel(ctx)
	done := make(chan error, 1)
	cfg := authsvc.Config{
		NATSURL: ns.ClientURL(), DatabaseURL: dsn, DirectusURL: dir.URL,
		HTTPAddr: "127.0.0.1:0", SessionTTL: 10 * time.Minute, DirectusConcurrency: o.DirectusConcurrency,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: reg,
	}
	go func() { done <- authsvc.Run(svcCtx, cfg) }()
	defer func() { stopSvc(); <-done }()

	conns := make([]*nats.Conn, o.Conns)
	for i := range conns {
		if conns[i], err = nats.Connect(ns.ClientURL()); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	clients := make([]*auth.Client, len(conns))
	for i, nc := range conns {
		clients[i] = auth.NewClient(nc, 10*time.Second)
	}
	if err := waitReady(clients[0]); err != nil {
		return err
	}

	fmt.Printf("authsvc benchmark: %d cores, GOMAXPROCS %d, %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	dc := o.DirectusConcurrency
	if dc == 0 {
		dc = 64
	}
	fmt.Printf("settings: AUTHSVC_DIRECTUS_CONCURRENCY=%d, other settings at their defaults, session TTL 10m for the run\n", dc)

	// Phase 1: the storm.
	fmt.Printf("\n== storm: %d validations over %d distinct cookies in one burst, Directus answering in %s\n", o.Storm, o.Creds, o.Latency)
	lat := make([]time.Duration, o.Storm)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < o.Storm; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[i%len(clients)]
			cred := i % o.Creds
			<-start
			t0 := time.Now()
			u, err := c.Session(ctx, auth.SessionRequest{Cookie: token(cred)})
			lat[i] = time.Since(t0)
			if err == nil && u.ID != userID(cred) {
				err = fmt.Errorf("credential %d resolved to %s", cred, u.ID)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	me0, gl0 := dir.Calls("/users/me"), dir.Calls("/policies/me/globals") // the readiness probe's
	h0, m0, c0 := metric(reg, "authsvc_cache_hits_total"), metric(reg, "authsvc_cache_misses_total"), metric(reg, "authsvc_singleflight_collapsed_total")
	t0 := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	slices.Sort(lat)
	me, gl := dir.Calls("/users/me")-me0, dir.Calls("/policies/me/globals")-gl0
	fmt.Printf("answered: %d ok, %d failed in %s\n", int64(o.Storm)-failed.Load(), failed.Load(), wall.Round(time.Millisecond))
	if e := firstErr.Load(); e != nil {
		fmt.Printf("first failure: %s\n", e)
	}
	fmt.Printf("Directus look-ups: %d (target <= %d): HTTP calls /users/me %d + /policies/me/globals %d = %d\n", me, o.Creds, me, gl, me+gl)
	fmt.Printf("answer latency: p50 %s  p99 %s  max %s\n", pct(lat, 50), pct(lat, 99), lat[len(lat)-1].Round(100*time.Microsecond))
	fmt.Printf("cache: %v hits, %v misses, of which %v joined a look-up in flight (singleflight)\n",
		metric(reg, "authsvc_cache_hits_total")-h0, metric(reg, "authsvc_cache_misses_total")-m0, metric(reg, "authsvc_singleflight_collapsed_total")-c0)

	// Phase 2: cached throughput against the raw echo ceiling.
	echoConn, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer echoConn.Close()
	reply := []byte(`{"user_id":"` + userID(0) + `","role":"` + roleID + `","admin":false}`)
	if _, err := echoConn.QueueSubscribe("bench.echo", "echo", func(m *nats.Msg) { _ = m.Respond(reply) }); err != nil {
		return err
	}
	_ = echoConn.Flush()
	payload, _ := json.Marshal(auth.SessionRequest{Cookie: token(0)})

	fmt.Printf("\n== throughput: %d requesters on %d connections, %d rounds of echo then cached, %s each\n", o.Workers, o.Conns, o.Rounds, o.Duration)
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	before := dir.Calls("/users/me")
	var echoRates, cachedRates, ratios []float64
	for r := 1; r <= o.Rounds; r++ {
		echo := measure(o, func(w int) error {
			_, err := conns[w%len(conns)].Request("bench.echo", payload, 10*time.Second)
			return err
		})
		cached := measure(o, func(w int) error {
			cred := w % o.Creds
			u, err := clients[w%len(clients)].Session(ctx, auth.SessionRequest{Cookie: token(cred)})
			if err == nil && u.ID != userID(cred) {
				err = errors.New("wrong user")
			}
			return err
		})
		echoRates, cachedRates = append(echoRates, echo.rate), append(cachedRates, cached.rate)
		ratios = append(ratios, cached.rate/echo.rate)
		fmt.Printf("round %d: raw NATS request/reply echo %8.0f req/s (p50 %s, p99 %s, %d errors)\n", r, echo.rate, echo.p50, echo.p99, echo.errors)
		fmt.Printf("round %d: cached session validations %8.0f req/s (p50 %s, p99 %s, %d errors)\n", r, cached.rate, cached.p50, cached.p99, cached.errors)
	}
	e, c := median(echoRates), median(cachedRates)
	fmt.Printf("median: echo %.0f req/s, cached validations %.0f req/s (target >= 30000), ratio cached/echo (median of rounds) %.2f\n", e, c, median(ratios))
	fmt.Printf("Directus calls during the throughput phase: %d\n", dir.Calls("/users/me")-before)
	return nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
	errors   int64
}

// measure runs o.Workers goroutines calling fn back to back for o.Duration.
func measure(o Config, fn func(worker int) error) result {
	var n, errs atomic.Int64
	lats := make([][]time.Duration, o.Workers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < o.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				if err := fn(w); err != nil {
					errs.Add(1)
				}
				// Sample one latency in 16 to keep memory flat.
				if c := n.Add(1); c%16 == 0 {
					lats[w] = append(lats[w], time.Since(t0))
				}
			}
		}()
	}
	t0 := time.Now()
	time.Sleep(o.Duration)
	close(stop)
	wg.Wait()
	el := time.Since(t0)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	return result{rate: float64(n.Load()) / el.Seconds(), p50: pct(all, 50), p99: pct(all, 99), errors: errs.Load()}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return sorted[i].Round(10 * time.Microsecond)
}

func metric(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "cache" && l.GetValue() == "session" {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return -1
}

func waitReady(c *auth.Client) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Session(context.Background(), auth.SessionRequest{Cookie: "warmup-not-a-token"})
		if errors.Is(err, auth.ErrUnauthorized) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("authsvc not answering: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const roleID = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"

func userID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// startDirectus starts the Directus fake on a loopback port with n members
// (userID(i), role roleID), each logged in, answering after latency; it
// returns the session cookie of user i at index i.
func startDirectus(n int, latency time.Duration) (*directus.Server, []string, error) {
	dir := directus.New(directus.Config{})
	tokens := make([]string, n)
	for i := range tokens {
		u := dir.AddUser(directus.User{ID: userID(i), Role: roleID})
		c, ok := dir.Session(u.Email, u.Password)
		if !ok {
			return nil, nil, fmt.Errorf("directus fake: no session for user %d", i)
		}
		tokens[i] = c
	}
	dir.SetLatency(latency)
	if err := dir.Listen("127.0.0.1:0"); err != nil {
		return nil, nil, err
	}
	return dir, tokens, nil
}
