package streams

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/testkit"
)

func TestEnsureIdempotentAndConcurrent(t *testing.T) {
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	o := Options{MaxAge: 48 * time.Hour}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- Ensure(ctx, js, o) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, Positions)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxAge != 48*time.Hour || !cfg.AllowDirect || cfg.Duplicates != DefaultDuplicates || cfg.Storage != jetstream.FileStorage {
		t.Fatalf("unexpected config: %+v", cfg)
	}
	// Changing a setting updates the stream in place.
	if err := Ensure(ctx, js, Options{MaxAge: 72 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, Positions)
	if s.CachedInfo().Config.MaxAge != 72*time.Hour {
		t.Fatalf("max age not updated: %v", s.CachedInfo().Config.MaxAge)
	}
	// Dedup by Nats-Msg-Id works on the stream as configured.
	p := contract.Position{DeviceID: "d1", TS: time.UnixMilli(1777802400000), Lat: 1, Lon: 2}
	for i := 0; i < 2; i++ {
		if _, err := js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	info, _ := s.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("dedup failed: %d messages", info.State.Msgs)
	}
	if _, err := js.Stream(ctx, DLQ); err != nil {
		t.Fatalf("DLQ stream: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{MaxAge: time.Minute},
		{Duplicates: time.Minute},
		{MaxAge: 2 * time.Hour, Duplicates: 3 * time.Hour},
		{Replicas: 7},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if err := (Options{}).Validate(); err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
}
