package export

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"testing"
)

// TestSpoolEvicts writes to more devices than may be open at once,
// interleaved, and gets every device's bytes back in order.
func TestSpoolEvicts(t *testing.T) {
	t.Parallel()
	sp := newSpool(t.TempDir())
	const devices, rounds = spoolMaxOpen + 72, 5
	for r := range rounds {
		for d := range devices {
			if err := sp.write(fmt.Sprintf("dev-%03d", d), []byte(fmt.Sprintf("%d,", r))); err != nil {
				t.Fatal(err)
			}
			if sp.open > spoolMaxOpen {
				t.Fatalf("%d files open, limit %d", sp.open, spoolMaxOpen)
			}
		}
	}
	devs, err := sp.devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != devices || devs[0] != "dev-000" || sp.open != 0 {
		t.Fatalf("%d devices, first %q, %d open", len(devs), devs[0], sp.open)
	}
	for _, dev := range devs {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if err := sp.copyTo(w, dev); err != nil {
			t.Fatal(err)
		}
		_ = w.Flush()
		if out.String() != "0,1,2,3,4," {
			t.Fatalf("%s: %q", dev, out.String())
		}
	}
	entries, _ := os.ReadDir(sp.dir)
	if len(entries) != devices {
		t.Fatalf("%d spool files, want %d", len(entries), devices)
	}
}
