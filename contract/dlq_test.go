package contract

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestDigest(t *testing.T) {
	sum := sha256.Sum256([]byte("abc"))
	if got, want := Digest("abc"), "sha256:"+hex.EncodeToString(sum[:])+" len:3"; got != want {
		t.Fatalf("Digest = %q, want %q", got, want)
	}
}

func TestDeadLetterFields(t *testing.T) {
	big := strings.Repeat("x", DeadLetterMaxValue+1)
	longName := strings.Repeat("n", DeadLetterMaxName+1)
	mid := strings.Repeat("m", 3000)
	for _, c := range []struct {
		name      string
		fields    map[string]string
		budget    int
		want      map[string]string // nil: want {}
		truncated string
		ok        bool
	}{
		{"as it was", map[string]string{"device_id": "d1", "attrs": "[1]"}, 1 << 20,
			map[string]string{"device_id": "d1", "attrs": "[1]"}, "", true},
		{"value over the bound", map[string]string{"device_id": "d1", "attrs": big}, 1 << 20,
			map[string]string{"device_id": "d1", "attrs": Digest(big)}, "attrs", true},
		{"name over the bound", map[string]string{longName: "v"}, 1 << 20,
			map[string]string{Digest(longName): "v"}, Digest(longName), true},
		{"largest first until it fits", map[string]string{"a": mid, "b": mid + "mm", "c": "small"}, 3200,
			map[string]string{"a": mid, "b": Digest(mid + "mm"), "c": "small"}, "b", true},
		{"every value cut", map[string]string{"a": mid, "b": mid}, 250,
			map[string]string{"a": Digest(mid), "b": Digest(mid)}, "a,b", true},
		{"nothing fits but {}", map[string]string{"a": mid, "b": mid}, 100, nil, "*", true},
		{"not even {}", map[string]string{"a": "b"}, 1, nil, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			data, truncated, ok := DeadLetterFields(c.fields, c.budget)
			if ok != c.ok || truncated != c.truncated {
				t.Fatalf("truncated %q ok %v, want %q %v", truncated, ok, c.truncated, c.ok)
			}
			if !ok {
				return
			}
			if len(data) > c.budget {
				t.Fatalf("%d bytes, budget %d", len(data), c.budget)
			}
			var got map[string]string
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatalf("payload %s: %v", data, err)
			}
			want := c.want
			if want == nil {
				want = map[string]string{}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("payload %.200v, want %.200v", got, want)
			}
		})
	}
}

// Whatever the fields, the payload fits the budget and the header list
// stays bounded.
func TestDeadLetterFieldsBounds(t *testing.T) {
	fields := map[string]string{}
	for i := 0; i < 300; i++ {
		fields[fmt.Sprintf("field-%04d-%s", i, strings.Repeat("k", 200))] = strings.Repeat("<&>", 1000) // escaped by JSON: 6 bytes each
	}
	for _, budget := range []int{2, 100, 4096, 1 << 20, 16 << 20} {
		data, truncated, ok := DeadLetterFields(fields, budget)
		if !ok || len(data) > budget || len(truncated) > DeadLetterMaxTruncated {
			t.Fatalf("budget %d: %d bytes, truncated %d bytes, ok %v", budget, len(data), len(truncated), ok)
		}
	}
}
