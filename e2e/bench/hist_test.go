package main

import (
	"testing"
	"time"
)

// Every value falls in the bucket whose edges hold it, buckets are
// contiguous and in order, and none is wider than 1/128 of its lower edge.
func TestHistBuckets(t *testing.T) {
	prev := -1
	for _, us := range append(seq(0, 5000), seq(1<<20-300, 1<<20+300)...) {
		i := histBucket(us)
		if lo, hi := histLower(i), histLower(i+1); us < lo || us >= hi {
			t.Fatalf("%d µs in bucket %d = [%d, %d)", us, i, lo, hi)
		}
		if i < prev {
			t.Fatalf("%d µs in bucket %d, after bucket %d", us, i, prev)
		}
		prev = i
	}
	for i := 1; i < histBuckets-1; i++ {
		lo, hi := histLower(i), histLower(i+1)
		if hi <= lo || (i >= histSub && (hi-lo)*histSub > lo) {
			t.Fatalf("bucket %d = [%d, %d)", i, lo, hi)
		}
	}
	if got := histBucket(1 << 50); got != histBuckets-1 {
		t.Fatalf("2^50 µs in bucket %d, want the last (%d)", got, histBuckets-1)
	}
}

func TestHistQuantile(t *testing.T) {
	h := newHist()
	for ms := 1; ms <= 1000; ms++ {
		h.add(time.Duration(ms) * time.Millisecond)
	}
	h.add(-time.Millisecond) // a clock step back counts as zero
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.quantile(c.q)
		if got < c.want || float64(got) > float64(c.want)*(1+1.0/histSub) {
			t.Errorf("quantile(%g) = %s, want %s within 1/%d above", c.q, got, c.want, histSub)
		}
	}
	if h.quantile(1) != time.Second {
		t.Errorf("quantile(1) = %s, want the maximum 1s", h.quantile(1))
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for v := from; v < to; v++ {
		s = append(s, v)
	}
	return s
}
