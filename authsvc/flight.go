package authsvc

import "sync"

// flight collapses concurrent calls with the same key into one, like
// golang.org/x/sync/singleflight, but reports a joining caller when it
// joins (onJoin), so the collapse metric moves while the call is still in
// flight.
type flight[V any] struct {
	mu    sync.Mutex
	calls map[string]*flightCall[V]
}

type flightCall[V any] struct {
	done chan struct{}
	val  V
	err  error
}

// do runs fn for key unless a call for key is in flight, in which case it
// calls onJoin and waits for that call's result.
func (f *flight[V]) do(key string, onJoin func(), fn func() (V, error)) (V, error) {
	f.mu.Lock()
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		onJoin()
		<-c.done
		return c.val, c.err
	}
	if f.calls == nil {
		f.calls = make(map[string]*flightCall[V])
	}
	c := &flightCall[V]{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()

	defer func() {
		f.mu.Lock()
		delete(f.calls, key)
		f.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn()
	return c.val, c.err
}
