package main

import (
	"math"
	"math/bits"
	"time"
)

// hist is a latency histogram over microseconds with log-linear buckets
// (as HdrHistogram's): exact below 128 µs, then 128 buckets per power of
// two, so a bucket is less than 0.8 % of its values wide. Integer
// operations only: each viewer process adds about two million samples a
// second on the same two cores as the pipeline it measures, and a
// logarithm per sample cost a fifth of a core there.
type hist struct {
	counts []uint64
	n      uint64
	max    time.Duration
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
	histMaxBits = 40 // 2^40 µs, 12.7 days: the last bucket holds anything longer
	histBuckets = (histMaxBits - histSubBits + 1) * histSub
)

func newHist() *hist { return &hist{counts: make([]uint64, histBuckets)} }

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

// histLower is the lowest value, in microseconds, of bucket i; bucket i
// holds [histLower(i), histLower(i+1)).
func histLower(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	return uint64(i%histSub+histSub) << shift
}

func (h *hist) add(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.counts[histBucket(us)]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the upper edge of the bucket holding quantile q, or
// the maximum if that is lower.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(h.n)))
	var acc uint64
	for i, c := range h.counts {
		acc += c
		if acc >= want {
			return min(time.Duration(histLower(i+1))*time.Microsecond, h.max)
		}
	}
	return h.max
}
