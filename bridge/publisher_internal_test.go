package bridge

import "testing"

// addAll returns the entries not in flight yet, in order, and marks them.
func TestInflightAddAll(t *testing.T) {
	s := newInflightSet(1)
	es := []entry{{id: "1-0"}, {id: "2-0"}, {id: "3-0"}, {id: "4-0"}}
	if !s.add(0, "2-0") || !s.add(0, "4-0") {
		t.Fatal("add of new ids refused")
	}
	got := s.addAll(0, es)
	if len(got) != 2 || got[0].id != "1-0" || got[1].id != "3-0" {
		t.Fatalf("addAll = %v, want 1-0 and 3-0", got)
	}
	if !s.contains(0, "1-0") || !s.contains(0, "3-0") {
		t.Fatal("addAll did not mark its entries")
	}
	if again := s.addAll(0, es); len(again) != 0 {
		t.Fatalf("second addAll = %v, want none", again)
	}
	fresh := []entry{{id: "5-0"}, {id: "6-0"}}
	if got := s.addAll(0, fresh); len(got) != 2 || &got[0] != &fresh[0] {
		t.Fatalf("all new: %v, want the same slice", got)
	}
}
