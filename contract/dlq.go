package contract

// Headers of a dead-lettered message on DLQSubject. The payload is the
// original entry: for a Redis entry, its fields as a flat JSON object of
// strings; for a JetStream message, its data unchanged.
const (
	// HeaderReason carries the Reason.
	HeaderReason = "Trm-Reason"
	// HeaderDetail carries the human-readable rejection sentence.
	HeaderDetail = "Trm-Detail"
	// HeaderSourceStream is the Redis stream key (bridge) or the JetStream
	// stream name (persister) the record came from.
	HeaderSourceStream = "Trm-Source-Stream"
	// HeaderSourceID is the Redis entry id, or the JetStream stream sequence.
	HeaderSourceID = "Trm-Source-Id"
	// HeaderSourceSubject is the original subject of a JetStream message.
	HeaderSourceSubject = "Trm-Source-Subject"
	// HeaderWorker names the worker that dead-lettered the record.
	HeaderWorker = "Trm-Worker"
)
