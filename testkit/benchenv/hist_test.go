package benchenv

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
		if lo, hi := HistLower(i), HistLower(i+1); us < lo || us >= hi {
			t.Fatalf("%d µs in bucket %d = [%d, %d)", us, i, lo, hi)
		}
		if i < prev {
			t.Fatalf("%d µs in bucket %d, after bucket %d", us, i, prev)
		}
		prev = i
	}
	for i := 1; i < histBuckets-1; i++ {
		lo, hi := HistLower(i), HistLower(i+1)
		if hi <= lo || (i >= histSub && (hi-lo)*histSub > lo) {
			t.Fatalf("bucket %d = [%d, %d)", i, lo, hi)
		}
	}
	if got := histBucket(1 << 50); got != histBuckets-1 {
		t.Fatalf("2^50 µs in bucket %d, want the last (%d)", got, histBuckets-1)
	}
}

func TestHistQuantile(t *testing.T) {
	h := NewHist()
	for ms := 1; ms <= 1000; ms++ {
		h.Add(time.Duration(ms) * time.Millisecond)
	}
	h.Add(-time.Millisecond) // a clock step back counts as zero
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.Quantile(c.q)
		if got < c.want || float64(got) > float64(c.want)*(1+1.0/histSub) {
			t.Errorf("Quantile(%g) = %s, want %s within 1/%d above", c.q, got, c.want, histSub)
		}
	}
	if h.Quantile(1) != time.Second {
		t.Errorf("Quantile(1) = %s, want the maximum 1s", h.Quantile(1))
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for v := from; v < to; v++ {
		s = append(s, v)
	}
	return s
}

// Merging two histograms gives the histogram of both sets of samples.
func TestHistMerge(t *testing.T) {
	a, b, both := NewHist(), NewHist(), NewHist()
	for ms := 1; ms <= 200; ms++ {
		d := time.Duration(ms) * time.Millisecond
		if ms%3 == 0 {
			a.Add(d)
		} else {
			b.Add(d)
		}
		both.Add(d)
	}
	a.Merge(b)
	if a.N != both.N || a.Max != both.Max {
		t.Fatalf("merged n %d max %s, want %d %s", a.N, a.Max, both.N, both.Max)
	}
	for i := range both.Counts {
		if a.Counts[i] != both.Counts[i] {
			t.Fatalf("bucket %d: merged %d, want %d", i, a.Counts[i], both.Counts[i])
		}
	}
}
