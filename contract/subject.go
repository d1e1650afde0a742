package contract

import (
	"strconv"
	"strings"
	"time"
)

// Subject names and tokens.
const (
	// SubjectPrefix is the first token of every position subject.
	SubjectPrefix = "pos"
	// PositionsWildcard captures every position: the POSITIONS stream's subject.
	PositionsWildcard = "pos.>"
	// UnassignedEvent is the event token of a position no assignment covers.
	UnassignedEvent = "unassigned"
	// DLQSubject is where dead-lettered entries and messages are published.
	DLQSubject = "dlq.positions"
)

// InboxPrefix is the reply-subject prefix of a worker's NATS connection
// (nats.CustomInboxPrefix; JetStream and request/reply use it too):
// _INBOX_<worker>, for worker bridge, persister, broadcaster or authsvc.
// deploy/nats/accounts.conf lets each worker's user subscribe to
// <prefix>.> only, so no worker can read another's replies.
func InboxPrefix(worker string) string { return "_INBOX_" + worker }

// PositionSubject returns pos.<event>.<device>. An empty event id gives the
// unassigned token. Callers pass validated ids only, which contain no dots or
// wildcards.
func PositionSubject(eventID, deviceID string) string {
	if eventID == "" {
		eventID = UnassignedEvent
	}
	return SubjectPrefix + "." + eventID + "." + deviceID
}

// EventSubject returns pos.<event>.*, every device of one event.
func EventSubject(eventID string) string {
	if eventID == "" {
		eventID = UnassignedEvent
	}
	return SubjectPrefix + "." + eventID + ".*"
}

// ParseSubject splits pos.<event>.<device>. The event id is returned empty
// for the unassigned token.
func ParseSubject(subject string) (eventID, deviceID string, ok bool) {
	rest, found := strings.CutPrefix(subject, SubjectPrefix+".")
	if !found {
		return "", "", false
	}
	eventID, deviceID, found = strings.Cut(rest, ".")
	if !found || eventID == "" || !ValidDeviceID(deviceID) {
		return "", "", false
	}
	if eventID == UnassignedEvent {
		return "", deviceID, true
	}
	if !ValidUUID(eventID) {
		return "", "", false
	}
	return eventID, deviceID, true
}

// MsgID returns the Nats-Msg-Id of a position: <device_id>:<ts unix ms>.
func MsgID(deviceID string, ts time.Time) string {
	return deviceID + ":" + strconv.FormatInt(ts.UnixMilli(), 10)
}

// ValidDeviceID reports whether s is 1-64 of [A-Za-z0-9_-], which also makes
// it a safe NATS subject token.
func ValidDeviceID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidUUID reports whether s is a UUID in canonical lowercase form
// (8-4-4-4-12 hex digits), the form PostgreSQL prints: event and user ids
// on the wire.
func ValidUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}
