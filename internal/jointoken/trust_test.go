package jointoken

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestTrustJoinTokenSingleUse: a token joins as many machines as its uses
// and no more, however many redeem it at once, against a real Consul's
// check-and-set; a redeem that fails gives back nothing it did not take,
// and a refund gives a use back.
func TestTrustJoinTokenSingleUse(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	raw := kvschema.New(srv.Client).JoinTokens()
	kv := state.JoinTokens(kvschema.New(srv.Client))
	ctx := context.Background()
	now := time.Now()
	for _, uses := range []int{1, 3} {
		tok, _ := New(strings.Repeat("ab", 32))
		if _, err := kv.Put(ctx, NewRecord(tok, "worker", uses, now, time.Hour), 0); err != nil {
			t.Fatalf("store the record: %v", err)
		}
		const redeemers = 12
		var wg sync.WaitGroup
		errs := make([]error, redeemers)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = Redeem(ctx, kv, tok.ID, tok.Secret, now)
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, ErrUsedUp):
				t.Errorf("a redeem failed otherwise than used up: %v", err)
			}
		}
		if won != uses {
			t.Errorf("%d machines redeemed a token of %d uses at once", won, uses)
		}
		if _, err := Redeem(ctx, kv, tok.ID, tok.Secret, now); !errors.Is(err, ErrUsedUp) {
			t.Errorf("a redeem after the last use: %v, want ErrUsedUp", err)
		}
		if err := Refund(ctx, kv, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := Redeem(ctx, kv, tok.ID, tok.Secret, now); err != nil {
			t.Errorf("a redeem after a refund: %v", err)
		}
	}

	// Refused redeems spend nothing.
	tok, _ := New(strings.Repeat("ab", 32))
	if _, err := kv.Put(ctx, NewRecord(tok, "worker", 1, now, time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	other, _ := New(tok.CAHash)
	for _, tc := range []struct {
		name   string
		secret string
		at     time.Time
		want   error
	}{
		{"a wrong secret", other.Secret, now, ErrWrongSecret},
		{"expired", tok.Secret, now.Add(2 * time.Hour), ErrExpired},
	} {
		if _, err := Redeem(ctx, kv, tok.ID, tc.secret, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := Redeem(ctx, kv, other.ID, other.Secret, now); !errors.Is(err, ErrUnknown) {
		t.Errorf("an unknown token: %v, want ErrUnknown", err)
	}
	if _, err := Redeem(ctx, kv, tok.ID, tok.Secret, now); err != nil {
		t.Errorf("the token after refused redeems: %v, want its one use left", err)
	}

	// A record that cannot be read, or that is filed under another
	// token's ID, joins nothing: as good as no token.
	good, _ := New(tok.CAHash)
	b, _ := json.Marshal(NewRecord(good, "worker", 5, now, time.Hour))
	for id, val := range map[string][]byte{"garbled": []byte("{not json"), "copied": b} {
		if _, err := raw.CAS(ctx, id, val, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := Redeem(ctx, kv, id, good.Secret, now); !errors.Is(err, ErrUnknown) {
			t.Errorf("a %s record: %v, want ErrUnknown", id, err)
		}
	}
}

// TestTrustJoinTokenHasType: a record without a type (made before tokens
// always named one) or without uses left joins no machine.
func TestTrustJoinTokenHasType(t *testing.T) {
	tok, _ := New(strings.Repeat("ab", 32))
	now := time.Now()
	rec := NewRecord(tok, "worker", 1, now, time.Hour)
	if err := Check(rec, tok.Secret, now); err != nil {
		t.Fatalf("a typed token with a use: %v", err)
	}
	untyped := rec
	untyped.Type = ""
	if err := Check(untyped, tok.Secret, now); !errors.Is(err, ErrNoType) {
		t.Errorf("a token without a type: %v, want ErrNoType", err)
	}
	var old state.JoinToken
	_ = json.Unmarshal([]byte(`{"id":"`+tok.ID+`","secret_sha256":"`+rec.SecretSHA256+`","type":"worker","expires":"`+now.Add(time.Hour).Format(time.RFC3339)+`"}`), &old)
	if err := Check(old, tok.Secret, now); !errors.Is(err, ErrUsedUp) {
		t.Errorf("a record of before uses were counted: %v, want ErrUsedUp", err)
	}
}
