package state

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/raptiformica/raptiformica/internal/kvschema"
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
	pairs := api.KVPairs{
		{Key: "raptiformica/inventory/a", Value: []byte(`{"id": "a", "type": "server"}`), ModifyIndex: 5},
		{Key: "raptiformica/inventory/b", Value: []byte(`{"id": "a", "state": "destroying"}`), ModifyIndex: 6},
		{Key: "raptiformica/inventory/c", Value: []byte(`{"id": "c", "reason": "` + strings.Repeat("x", 100) + `"}`), ModifyIndex: 7},
		{Key: "raptiformica/inventory/d", Value: []byte(`{"id": `), ModifyIndex: 8},
		{Key: "raptiformica/inventory/.watch", Value: nil, ModifyIndex: 9},
		{Key: "raptiformica/offers/e", Value: []byte(`{"id": "e"}`), ModifyIndex: 10},
	}
	c, err := api.NewClient(api.DefaultConfig()) // never dialled: the folder only decodes
	if err != nil {
		t.Fatal(err)
	}
	inv := NewFolder[Record](kvschema.New(c).Folder(kvschema.Inventory), RecordKind, 64, nil)
	got, bad := inv.DecodeList(pairs)
	want := map[string]Record{"a": {ID: "a", Type: "server", Index: 5}}
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
	for i, why := range []string{`names "a"`, "more than 64", "unexpected end"} {
		if i < len(bad) && !strings.Contains(bad[i].Error, why) {
			t.Errorf("%s refused for %q, want %q", bad[i].Key, bad[i].Error, why)
		}
	}
}
