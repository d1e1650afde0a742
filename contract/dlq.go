package contract

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// Headers of a dead-lettered message on DLQSubject. The payload is the
// original entry: for a Redis entry, its fields as a flat JSON object of
// strings (see DeadLetterFields for what is cut to fit); for a JetStream
// message, its data unchanged.
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
	// HeaderTruncated lists, comma separated and sorted, the payload keys
	// whose value (or whose name) was replaced by its Digest to make the
	// dead letter fit; "*" means every field was left out. Absent when the
	// payload is the entry as it was.
	HeaderTruncated = "Trm-Truncated"
)

// Bounds of a dead letter built from a Redis entry.
const (
	// DeadLetterMaxValue is the longest field value copied as it is; a
	// longer one is replaced by its Digest. Twice MaxAttrsBytes, so a
	// rejected attrs of ordinary size is kept for diagnosis.
	DeadLetterMaxValue = 16 << 10
	// DeadLetterMaxName is the longest field name copied as it is; a
	// longer one is replaced by its Digest.
	DeadLetterMaxName = 256
	// DeadLetterMaxTruncated bounds the HeaderTruncated value; a longer
	// list is cut after a whole name and ends with ",…".
	DeadLetterMaxTruncated = 1024
)

// Digest stands for a value left out of a dead letter: its SHA-256 and
// length in bytes, "sha256:<64 hex digits> len:<n>".
func Digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:]) + " len:" + strconv.Itoa(len(s))
}

// DeadLetterFields encodes the fields of a rejected Redis entry as the
// dead-letter payload, a flat JSON object of strings, in at most budget
// bytes. A name longer than DeadLetterMaxName or a value longer than
// DeadLetterMaxValue is replaced by its Digest; then, while the object is
// still over budget, the largest remaining values are. When even that does
// not fit, the payload is {} and truncated is "*". truncated is the
// HeaderTruncated value ("" when nothing was cut); ok is false only when
// budget cannot hold {}.
func DeadLetterFields(fields map[string]string, budget int) (data []byte, truncated string, ok bool) {
	if budget < 2 {
		return nil, "", false
	}
	type field struct {
		name, value string
		qlen        int // len of the quoted value
		cut         bool
	}
	list := make([]field, 0, len(fields))
	size := 2 // {}
	for k, v := range fields {
		f := field{name: k, value: v}
		if len(k) > DeadLetterMaxName {
			f.name, f.cut = Digest(k), true
		}
		if len(v) > DeadLetterMaxValue {
			f.value, f.cut = Digest(v), true
		}
		f.qlen = quotedLen(f.value)
		size += quotedLen(f.name) + 1 + f.qlen
		list = append(list, f)
	}
	size += max(len(list)-1, 0) // commas
	if size > budget {
		// Largest values first: the fewest fields cut.
		slices.SortFunc(list, func(a, b field) int { return cmp.Compare(b.qlen, a.qlen) })
		for i := range list {
			if size <= budget {
				break
			}
			d := Digest(list[i].value)
			if dl := quotedLen(d); dl < list[i].qlen {
				size -= list[i].qlen - dl
				list[i].value, list[i].qlen, list[i].cut = d, dl, true
			}
		}
	}
	if size > budget {
		return []byte("{}"), "*", true
	}
	out := make(map[string]string, len(list))
	var cut []string
	for _, f := range list {
		out[f.name] = f.value
		if f.cut {
			cut = append(cut, f.name)
		}
	}
	data, _ = json.Marshal(out) // a map of strings always marshals
	if len(data) > budget {     // never, unless quotedLen and json disagree
		return []byte("{}"), "*", true
	}
	slices.Sort(cut)
	return data, truncatedList(cut), true
}

// quotedLen is the length of s as a JSON string, as encoding/json writes it.
func quotedLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b)
}

func truncatedList(names []string) string {
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			if b.Len()+1+len(n) > DeadLetterMaxTruncated-len(",…") {
				b.WriteString(",…")
				break
			}
			b.WriteByte(',')
		}
		b.WriteString(n)
	}
	return b.String()
}
