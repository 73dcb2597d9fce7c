package state

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIDOf(t *testing.T) {
	for _, tc := range []struct {
		key, id string
		ok      bool
	}{
		{"f/m1", "m1", true},
		{"f/", "", false},
		{"f/sub/m1", "", false},
		{"f/.watch", "", false},
		{"g/m1", "", false},
	} {
		id, ok := IDOf("f/", tc.key)
		if id != tc.id || ok != tc.ok {
			t.Errorf("IDOf(%q): got %q %v, want %q %v", tc.key, id, ok, tc.id, tc.ok)
		}
	}
}

// TestTrustDecodeBindsToKey: a record is read only for the machine its key
// names, within its folder's cap, and a refused one is named with why
// while the others are read.
func TestTrustDecodeBindsToKey(t *testing.T) {
	pairs := []Pair{
		{Key: "raptiformica/inventory/a", Value: []byte(`{"id": "a", "type": "server"}`), Index: 5},
		{Key: "raptiformica/inventory/b", Value: []byte(`{"id": "a", "state": "destroying"}`), Index: 6},
		{Key: "raptiformica/inventory/c", Value: []byte(`{"id": "c", "reason": "` + strings.Repeat("x", 100) + `"}`), Index: 7},
		{Key: "raptiformica/inventory/d", Value: []byte(`{"id": `), Index: 8},
		{Key: "raptiformica/inventory/.watch", Value: nil, Index: 9},
	}
	got, bad := DecodeAll[Record](RecordKind, "raptiformica/inventory/", pairs, 64)
	want := map[string]Item[Record]{"a": {Value: Record{ID: "a", Type: "server"}, Index: 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	var keys []string
	for _, b := range bad {
		keys = append(keys, b.Key)
	}
	if diff := cmp.Diff([]string{"raptiformica/inventory/b", "raptiformica/inventory/c", "raptiformica/inventory/d"}, keys); diff != "" {
		t.Errorf("refused (-want +got):\n%s", diff)
	}
	for i, why := range []string{`names machine "a"`, "more than 64", "unexpected end"} {
		if i < len(bad) && !strings.Contains(bad[i].Error, why) {
			t.Errorf("%s refused for %q, want %q", bad[i].Key, bad[i].Error, why)
		}
	}
}
