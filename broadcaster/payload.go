package broadcaster

import "trm-live/contract"

// payload validates a position payload received on the subject of event
// and device, and returns its fix time (Unix ms) and the bytes to send.
// The bridge writes every payload in Encode's layout, which is forwarded
// as it is: the payload and the WebSocket item are the same bytes, with no
// decode and re-encode per message. Any other layout that is a valid
// position is re-encoded once, so a client never gets invalid or
// non-compact JSON.
func payload(data []byte, eventID, device string) (ts int64, item []byte, ok bool) {
	p, exact, err := contract.DecodePayload(data)
	if err != nil || p.DeviceID != device || p.EventID != eventID {
		return 0, nil, false
	}
	if !exact {
		data = p.Encode()
	}
	return p.TSMillis(), data, true
}
