package main

import "testing"

func TestParseVariants(t *testing.T) {
	vs, err := ParseVariants(DefaultAB + "; batch=500, parse-workers=4 ;gogc=400")
	if err != nil {
		t.Fatal(err)
	}
	want := []Variant{
		{Name: "typed-reads=1", TypedReads: true},
		{Name: "parse-workers=1", ParseWorkers: 1},
		{Name: "mode=batch", Mode: "batch"},
		{Name: "aof-rewrite=auto", AOFRewrite: true},
		{Name: "batch=500, parse-workers=4", Batch: 500, ParseWorkers: 4},
		{Name: "gogc=400", GOGC: 400},
	}
	if len(vs) != len(want) {
		t.Fatalf("got %+v, want %+v", vs, want)
	}
	for i := range want {
		if vs[i] != want[i] {
			t.Fatalf("variant %d: got %+v, want %+v", i, vs[i], want[i])
		}
	}
	for _, bad := range []string{"batch", "batch=0", "workers=2", "batch=x", "mode=fast", "typed-reads=2", "aof-rewrite=always", "gogc=0"} {
		if _, err := ParseVariants(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
