package benchenv

import (
	"math"
	"math/bits"
	"time"
)

// Hist is a latency histogram over microseconds with log-linear buckets
// (as HdrHistogram's): exact below 128 µs, then 128 buckets per power of
// two, so a bucket is less than 0.8 % of its values wide. Integer
// operations only: a viewer process of the end-to-end benchmark adds
// about two million samples a second on the same two cores as the
// pipeline it measures, and a logarithm per sample cost a fifth of a core
// there.
//
// Counts has 4,352 entries (34 KiB); bucket i counts the latencies of
// [HistLower(i), HistLower(i+1)) µs. N is the number of samples and Max
// the largest. The fields are exported so that a histogram can cross a
// process boundary (as JSON) and be drawn; Add and Merge keep them
// consistent.
type Hist struct {
	Counts []uint64
	N      uint64
	Max    time.Duration
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histMaxBits = 40 // 2^40 µs, 12.7 days: the last bucket holds anything longer
	histBuckets = (histMaxBits - histSubBits + 1) * histSub
)

// NewHist returns an empty histogram.
func NewHist() *Hist { return &Hist{Counts: make([]uint64, histBuckets)} }

// histBucket is the bucket of a latency of us microseconds.
func histBucket(us uint64) int {
	if us < histSub {
		return int(us)
	}
	if us >= 1<<histMaxBits {
		return histBuckets - 1
	}
	shift := bits.Len64(us) - histSubBits - 1
	return shift*histSub + int(us>>shift)
}

// HistLower is the lowest value, in microseconds, of bucket i; bucket i
// holds [HistLower(i), HistLower(i+1)).
func HistLower(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	return uint64(i%histSub+histSub) << shift
}

// Add counts one latency; a negative one (a clock stepped back) counts
// as zero.
func (h *Hist) Add(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.Counts[histBucket(us)]++
	h.N++
	if d > h.Max {
		h.Max = d
	}
}

// Merge adds o's samples to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.Max = max(h.Max, o.Max)
}

// Quantile returns the upper edge of the bucket holding quantile q, or
// the maximum if that is lower; 0 when h is empty.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.N == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(h.N)))
	var acc uint64
	for i, c := range h.Counts {
		acc += c
		if acc >= want {
			return min(time.Duration(HistLower(i+1))*time.Microsecond, h.Max)
		}
	}
	return h.Max
}
