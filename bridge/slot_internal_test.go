package bridge

import (
	"reflect"
	"testing"
)

// keySlot agrees with Redis's CLUSTER KEYSLOT (the cluster test checks it
// against a real cluster too) and honours hash tags.
func TestKeySlot(t *testing.T) {
	for key, want := range map[string]int{
		"123456789":               12739, // the CRC16-XMODEM check value, 0x31C3
		"foo":                     12182,
		"{0}":                     13907,
		"telemetry:positions:{0}": 13907,
		"a{}b":                    keySlot("a{}b"), // empty tag: the whole key
		"{user1000}.following":    keySlot("user1000"),
		"x{a}{b}":                 keySlot("a"), // the first tag only
	} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
	if keySlot("a{}b") == keySlot("") {
		t.Error("an empty hash tag must not select the empty string")
	}
}

// On one server every stream is read by one XREADGROUP; on a cluster,
// streams sharing a slot are read together and the others apart.
func TestReadGroups(t *testing.T) {
	streams := []string{"p:{0}", "p:{1}", "q:{0}", "p:{3}"}
	if got := readGroups(streams, false); !reflect.DeepEqual(got, [][]int{{0, 1, 2, 3}}) {
		t.Errorf("single: %v", got)
	}
	if got := readGroups(streams, true); !reflect.DeepEqual(got, [][]int{{0, 2}, {1}, {3}}) {
		t.Errorf("cluster: %v", got)
	}
}
