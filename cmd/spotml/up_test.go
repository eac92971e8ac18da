package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpRetentionNegative: a negative --retention is refused with the flag
// named and the fix, before anything is created.
func TestUpRetentionNegative(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	err := run(t.Context(), []string{"server", "--data", data, "--retention", "-1h", "--addr", "127.0.0.1:0", "--gateway-addr", ""},
		func(string) string { return "" }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--retention") || !strings.Contains(err.Error(), "0 to keep all history") {
		t.Fatalf("err = %v, want one naming --retention and the fix", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("data directory created: %v", err)
	}
}
