package broadcaster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// maxMultiLast is the most subjects one batch direct get may match; past it
// the server answers 413 and no data (server/stream.go maxAllowedResponses).
const maxMultiLast = 1024

// errSnapshot wraps every snapshot failure: JetStream could not answer.
var errSnapshot = errors.New("snapshot unavailable")

// snapshotter reads the latest position of every device of an event from
// the POSITIONS stream with the batch direct get ("multi_last"), which
// needs server ≥ 2.11 and AllowDirect. nats.go v1.55.0 has no API for it,
// so it is a raw request to $JS.API.DIRECT.GET.POSITIONS.
type snapshotter struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	timeout time.Duration
	m       *metrics
}

// snapPosition is one stored position: its device, fix time and
// canonical bytes.
type snapPosition struct {
	device string
	ts     int64
	data   []byte
}

// latest returns the newest stored position of every device of eventID.
// An event with nothing stored gives an empty result.
func (s *snapshotter) latest(ctx context.Context, eventID string) ([]snapPosition, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	out, err := s.multiLast(ctx, eventID, []string{contract.EventSubject(eventID)})
	if errors.Is(err, errTooMany) {
		// More than 1,024 devices: list the event's subjects, then ask for
		// them in chunks of explicit subjects.
		out, err = s.chunked(ctx, eventID)
	}
	if err != nil {
		return nil, err
	}
	s.m.snapshotLatency.Observe(time.Since(start).Seconds())
	s.m.snapshotPositions.Observe(float64(len(out)))
	return out, nil
}

var errTooMany = errors.New("too many subjects for one batch get")

func (s *snapshotter) chunked(ctx context.Context, eventID string) ([]snapPosition, error) {
	stream, err := s.js.Stream(ctx, streams.Positions)
	if err != nil {
		return nil, fmt.Errorf("%w: stream %s: %v", errSnapshot, streams.Positions, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(contract.EventSubject(eventID)))
	if err != nil {
		return nil, fmt.Errorf("%w: list subjects: %v", errSnapshot, err)
	}
	subjects := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		subjects = append(subjects, subj)
	}
	sort.Strings(subjects)
	out := make([]snapPosition, 0, len(subjects))
	for len(subjects) > 0 {
		n := min(len(subjects), maxMultiLast)
		part, err := s.multiLast(ctx, eventID, subjects[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, part...)
		subjects = subjects[n:]
	}
	return out, nil
}

// multiLast sends one batch direct get and collects its replies until the
// end-of-batch status.
func (s *snapshotter) multiLast(ctx context.Context, eventID string, subjects []string) ([]snapPosition, error) {
	return s.multiLastUpTo(ctx, eventID, subjects, time.Time{})
}

// multiLastUpTo is multiLast among the messages stored at or before upTo
// (zero: all), the "up_to_time" of the batch direct get. Replays use it
// (replay_source.go).
func (s *snapshotter) multiLastUpTo(ctx context.Context, eventID string, subjects []string, upTo time.Time) ([]snapPosition, error) {
	var upToTime *time.Time
	if !upTo.IsZero() {
		upToTime = &upTo
	}
	req, err := json.Marshal(struct {
		MultiLast []string   `json:"multi_last"`
		UpToTime  *time.Time `json:"up_to_time,omitempty"`
	}{subjects, upToTime})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSnapshot, err)
	}
	inbox := s.nc.NewRespInbox()
	// A channel subscription drops what does not fit, so it holds every
	// reply one request can bring: at most 1,024 positions and the status.
	msgs := make(chan *nats.Msg, maxMultiLast+2)
	sub, err := s.nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribe inbox: %v", errSnapshot, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$JS.API.DIRECT.GET."+streams.Positions, inbox, req); err != nil {
		return nil, fmt.Errorf("%w: request: %v", errSnapshot, err)
	}
	var out []snapPosition
	for {
		var msg *nats.Msg
		select {
		case msg = <-msgs:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v after %d positions", errSnapshot, ctx.Err(), len(out))
		}
		if status := msg.Header.Get("Status"); status != "" {
			switch status {
			case "204": // end of batch
				return out, nil
			case "404": // nothing stored for these subjects
				return out, nil
			case "413":
				return nil, errTooMany
			case "503":
				return nil, fmt.Errorf("%w: no responders: stream %s missing or JetStream down", errSnapshot, streams.Positions)
			default:
				return nil, fmt.Errorf("%w: status %s %s", errSnapshot, status, msg.Header.Get("Description"))
			}
		}
		ev, device, ok := contract.ParseSubject(msg.Header.Get("Nats-Subject"))
		if !ok || ev != eventID {
			s.m.messagesInvalid.Inc()
			continue
		}
		ts, item, ok := payload(msg.Data, eventID, device)
		if !ok {
			s.m.messagesInvalid.Inc()
			continue
		}
		out = append(out, snapPosition{device: device, ts: ts, data: item})
	}
}
