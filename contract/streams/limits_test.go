package streams

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/testkit"
)

func TestLimitsValidate(t *testing.T) {
	for _, o := range []Options{
		{MaxBytes: 1000},
		{MaxBytes: -2},
		{DLQMaxBytes: -1},
		{DLQMaxBytes: MinMaxBytes - 1},
	} {
		if err := o.Validate(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	for _, o := range []Options{{}, {MaxBytes: -1}, {MaxBytes: MinMaxBytes, DLQMaxBytes: MinMaxBytes}} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v rejected: %v", o, err)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"-1": -1, "0": 0, "1048576": 1 << 20, "512MiB": 512 << 20, "40GB": 40 << 30, "1g": 1 << 30,
		"2 TB": 2 << 40, "64K": 64 << 10, "1B": 1,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "-2", "1.5GB", "10XB", "9999999999T"} {
		if n, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, n)
		}
	}
}

// The byte limits and discard policies as documented; a stream created by
// an earlier version (DiscardOld, no byte limit) is updated in place.
func TestEnsureLimits(t *testing.T) {
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	old := PositionsConfig(Options{})
	old.Discard, old.MaxBytes = jetstream.DiscardOld, -1
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(ctx, js, Options{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		discard  jetstream.DiscardPolicy
		maxBytes int64
	}{
		Positions: {jetstream.DiscardNew, -1},
		DLQ:       {jetstream.DiscardOld, DefaultDLQMaxBytes},
	} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if c := s.CachedInfo().Config; c.Discard != want.discard || c.MaxBytes != want.maxBytes {
			t.Errorf("%s: discard %v max bytes %d, want %v %d", name, c.Discard, c.MaxBytes, want.discard, want.maxBytes)
		}
	}
	if err := Ensure(ctx, js, Options{MaxBytes: 2 << 30, DLQMaxBytes: MinMaxBytes}); err != nil {
		t.Fatal(err)
	}
	s, _ := js.Stream(ctx, Positions)
	if got := s.CachedInfo().Config.MaxBytes; got != 2<<30 {
		t.Fatalf("POSITIONS max bytes %d after the update, want %d", got, 2<<30)
	}
}

// A flood of dead letters three times the DLQ's limit: every publish is
// accepted (the oldest are deleted) and the DLQ stays within its limit. A
// full POSITIONS refuses new messages and keeps the old ones.
func TestFullStreams(t *testing.T) {
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	if err := Ensure(ctx, js, Options{MaxBytes: MinMaxBytes, DLQMaxBytes: MinMaxBytes}); err != nil {
		t.Fatal(err)
	}
	letter := make([]byte, 64<<10)
	for i := 0; i < 48; i++ {
		if _, err := js.Publish(ctx, contract.DLQSubject, letter); err != nil {
			t.Fatalf("dead letter %d refused: %v", i, err)
		}
	}
	dlq, _ := js.Stream(ctx, DLQ)
	info, err := dlq.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > MinMaxBytes || info.State.FirstSeq == 1 {
		t.Fatalf("DLQ holds %d bytes from seq %d: the limit or DiscardOld does not hold", info.State.Bytes, info.State.FirstSeq)
	}
	var refused error
	stored := 0
	for i := 0; refused == nil && i < 100000; i++ {
		p := contract.Position{DeviceID: "d1", TS: time.UnixMilli(1777802400000 + int64(i)), Lat: 1, Lon: 2}
		_, refused = js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID()))
		if refused == nil {
			stored++
		}
	}
	var apiErr *jetstream.APIError
	if !errors.As(refused, &apiErr) || stored == 0 {
		t.Fatalf("after %d positions: %v, want a JetStream refusal", stored, refused)
	}
	t.Logf("POSITIONS full after %d positions: %v (code %d)", stored, refused, apiErr.ErrorCode)
	pos, _ := js.Stream(ctx, Positions)
	if info, err := pos.Info(ctx); err != nil || info.State.FirstSeq != 1 || info.State.Msgs != uint64(stored) {
		t.Fatalf("POSITIONS state %+v (%v): want every stored position kept", info.State, err)
	}
}
