package jointoken

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRoundTripAndCheck(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	tok, err := New(hash)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(tok.String())
	if err != nil || got != tok {
		t.Fatalf("parse %q: %+v, %v", tok, got, err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := NewRecord(tok, "worker", 1, now, time.Hour)
	if strings.Contains(rec.SecretSHA256, tok.Secret) {
		t.Fatal("the record holds the secret")
	}
	if err := Check(rec, tok.Secret, now.Add(59*time.Minute)); err != nil {
		t.Errorf("a valid token: %v", err)
	}
	if err := Check(rec, tok.Secret, now.Add(time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("at its expiry: %v, want ErrExpired", err)
	}
	other, _ := New(hash)
	if err := Check(rec, other.Secret, now); !errors.Is(err, ErrWrongSecret) {
		t.Errorf("another secret: %v, want ErrWrongSecret", err)
	}
}

func TestParseRefuses(t *testing.T) {
	good, _ := New(strings.Repeat("0", 64))
	for _, s := range []string{
		"", "RF1", "RF2." + strings.TrimPrefix(good.String(), "RF1."),
		strings.Replace(good.String(), good.CAHash, "zz", 1),
		strings.Replace(good.String(), good.Secret, good.Secret[:10], 1),
		good.String() + ".x",
	} {
		if _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) took it", s)
		}
	}
}
