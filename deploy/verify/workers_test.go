package verify

import (
	"errors"
	"fmt"
	"sync"

	"trm-live/authsvc"
	"trm-live/bridge"
	"trm-live/broadcaster"
	"trm-live/persister"
)

// workerSpec loads one worker's configuration the way its main does.
type workerSpec struct {
	load func(getenv func(string) string) error
	// config loads the effective configuration, for its String().
	config func(getenv func(string) string) (fmt.Stringer, error)
	once   sync.Once
	read   map[string]bool
}

// reads is every environment variable the worker's LoadConfig asks for,
// recorded by calling it with an empty environment.
func (s *workerSpec) reads() map[string]bool {
	s.once.Do(func() {
		s.read = map[string]bool{}
		var mu sync.Mutex
		_ = s.load(func(k string) string {
			mu.Lock()
			s.read[k] = true
			mu.Unlock()
			return ""
		})
	})
	return s.read
}

// workerSpecs maps a Dockerfile WORKER build argument to the worker.
var workerSpecs = map[string]*workerSpec{
	"bridge": {load: func(g func(string) string) error {
		_, err := bridge.LoadConfig(nil, g)
		return err
	}, config: func(g func(string) string) (fmt.Stringer, error) { return bridge.LoadConfig(nil, g) }},
	"persister": {load: func(g func(string) string) error {
		_, err := persister.LoadConfig(nil, g)
		return err
	}, config: func(g func(string) string) (fmt.Stringer, error) { return persister.LoadConfig(nil, g) }},
	"authsvc": {load: func(g func(string) string) error {
		_, err := authsvc.LoadConfig(nil, g)
		return err
	}, config: func(g func(string) string) (fmt.Stringer, error) { return authsvc.LoadConfig(nil, g) }},
	"broadcaster": {load: func(g func(string) string) error {
		_, err := broadcaster.LoadConfig(nil, g)
		return err
	}, config: func(g func(string) string) (fmt.Stringer, error) { return broadcaster.LoadConfig(nil, g) }},
}

func init() {
	// trm-dev runs every worker in one process on the same environment,
	// except NATS_URL and HTTP_ADDR, which it sets itself.
	workerSpecs["trm-dev"] = &workerSpec{load: func(g func(string) string) error {
		env := func(k string) string {
			switch k {
			case "NATS_URL":
				return "nats://127.0.0.1:4222"
			case "HTTP_ADDR":
				return "127.0.0.1:0"
			}
			return g(k)
		}
		g("DEV_HTTP_ADDR") // read by trm-dev itself: its browser origin
		var errs []error
		for _, w := range devWorkers {
			if err := workerSpecs[w].load(env); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", w, err))
			}
		}
		return errors.Join(errs...)
	}}
}

// devWorkers are the workers inside the dev binary.
var devWorkers = []string{"bridge", "persister", "authsvc", "broadcaster"}
