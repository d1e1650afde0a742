package ws

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"trm-live/contract"
)

// Subscription options (contract v1, optional; a subscribe without them is
// unchanged). They apply to live subscriptions and to replays alike:
//
//	→ {"type":"subscribe","topic":T,"id":…,"max_hz":1,"devices":["d1","d2"]}
//	→ {"type":"subscribe","topic":T,"id":…,"max_hz":2,"devices":[…],"replay":{…}}
//
// max_hz caps, per device, how often the subscription sends a position: two
// positions of one device leave the server at least 1/max_hz apart, and the
// newest position of a device leaves at most 1/max_hz after the server got
// it (the ones in between are dropped, newest wins). The snapshot in the
// subscribed frame is not held back; the interval of each device in it
// starts there.
//
// devices restricts the subscription, snapshot and positions, to the listed
// device ids. Ids never seen on the topic are allowed (a car not yet on
// track).
//
// Both are fixed for the subscription's life: to change them, unsubscribe
// and subscribe again (a second subscribe of the same topic is refused).

// Bounds of the subscription options.
const (
	// MinMaxHz is the smallest max_hz: one position per device every 100 s.
	MinMaxHz = 0.01
	// MaxHzLimit is the largest max_hz; higher rates are what a
	// subscription without max_hz gets anyway.
	MaxHzLimit = 100
	// MaxDevices is the most device ids one subscribe may list.
	MaxDevices = 500
)

// SubscribeOptions are the optional fields of a subscribe, live or replay.
// The zero value is no option: every device, every position.
type SubscribeOptions struct {
	// MaxHz is the per-device rate cap in positions per second; 0 = none.
	MaxHz float64
	// Devices, when not nil, is the only devices the subscription carries:
	// 1 to MaxDevices distinct valid device ids, in the client's order.
	Devices []string
}

// IsZero reports whether o sets no option.
func (o SubscribeOptions) IsZero() bool { return o.MaxHz == 0 && o.Devices == nil }

// Interval is the least time between two positions of one device at
// o.MaxHz, or 0 when there is no cap.
func (o SubscribeOptions) Interval() time.Duration {
	if o.MaxHz <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(float64(time.Second) / o.MaxHz))
}

// parseOptions fills r.Options from the raw max_hz and devices fields. It
// returns a message for the error frame naming the field, or "".
func parseOptions(r *Request, maxHz, devices json.RawMessage) string {
	if maxHz == nil && devices == nil {
		return ""
	}
	if r.Type != TypeSubscribe {
		field := "max_hz"
		if maxHz == nil {
			field = "devices"
		}
		return field + " is only allowed on subscribe"
	}
	if maxHz != nil {
		var f float64
		if err := json.Unmarshal(maxHz, &f); err != nil || !(f >= MinMaxHz && f <= MaxHzLimit) {
			return fmt.Sprintf("max_hz must be a number from %v to %d", MinMaxHz, MaxHzLimit)
		}
		r.Options.MaxHz = f
	}
	if devices != nil {
		var ids []string
		if err := json.Unmarshal(devices, &ids); err != nil || ids == nil {
			return "devices must be an array of device id strings"
		}
		if len(ids) == 0 || len(ids) > MaxDevices {
			return fmt.Sprintf("devices must list 1 to %d device ids, got %d", MaxDevices, len(ids))
		}
		seen := make(map[string]struct{}, len(ids))
		for i, id := range ids {
			if !contract.ValidDeviceID(id) {
				return fmt.Sprintf("devices[%d]: %q is not a device id (1-64 of [A-Za-z0-9_-])", i, shorten(id))
			}
			if _, dup := seen[id]; dup {
				return fmt.Sprintf("devices[%d]: %q is listed twice", i, id)
			}
			seen[id] = struct{}{}
		}
		r.Options.Devices = ids
	}
	return ""
}

// appendOptions appends the options as fields: ,"max_hz":…,"devices":[…].
func appendOptions(b []byte, o SubscribeOptions) []byte {
	if o.MaxHz > 0 {
		b = append(b, `,"max_hz":`...)
		b = strconv.AppendFloat(b, o.MaxHz, 'f', -1, 64)
	}
	if o.Devices != nil {
		b = append(b, `,"devices":[`...)
		for i, d := range o.Devices {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, d)
		}
		b = append(b, ']')
	}
	return b
}

// encodePlain encodes a live subscribe or unsubscribe.
func (r Request) encodePlain() []byte {
	b := append([]byte(nil), `{"type":`...)
	b = appendString(b, r.Type)
	b = append(b, `,"topic":`...)
	b = appendString(b, r.Topic)
	if r.ID != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, r.ID)
	}
	if r.Type == TypeSubscribe {
		b = appendOptions(b, r.Options)
	}
	return append(b, '}')
}

// DeviceSet returns o.Devices as a set, or nil when every device is
// wanted.
func (o SubscribeOptions) DeviceSet() map[string]struct{} {
	if o.Devices == nil {
		return nil
	}
	set := make(map[string]struct{}, len(o.Devices))
	for _, d := range o.Devices {
		set[d] = struct{}{}
	}
	return set
}
