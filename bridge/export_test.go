package bridge

// ErrCrash is what Run returns when a crash hook stopped it.
var ErrCrash = errCrash

// WithCrashBeforeAck returns cfg with a hook called before each XACK batch
// with the batch size; when it returns true the bridge stops at once
// without acknowledging, as a crash between publish and XACK would.
func WithCrashBeforeAck(cfg Config, f func(n int) bool) Config {
	cfg.crashBeforeAck = f
	return cfg
}

// KeySlot is the Redis Cluster hash slot of a key.
var KeySlot = keySlot
