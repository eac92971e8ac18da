package blob

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// escapeKeySlow is escapeKey as gocloud.dev/internal/escape writes it,
// turning the rest of the key into a string at every rune: the reference
// the fast check of isEscapeSequence must agree with.
func escapeKeySlow(key string) string {
	r := []rune(key)
	var sb strings.Builder
	for i, c := range r {
		esc := c < 32 ||
			(i > 1 && c == '/' && r[i-1] == '.' && r[i-2] == '.') ||
			(i > 0 && c == '/' && r[i-1] == '/') ||
			(c == '/' && i == len(r)-1)
		if !esc {
			s := string(r[i:])
			if strings.HasPrefix(s, "__0x") {
				digits, _, ok := strings.Cut(s[4:], "_")
				if ok && strings.HasPrefix(s[4+len(digits):], "__") {
					_, err := strconv.ParseInt(digits, 16, 32)
					esc = err == nil
				}
			}
		}
		if esc {
			fmt.Fprintf(&sb, "__%#x__", c)
		} else {
			sb.WriteRune(c)
		}
	}
	return sb.String()
}

func TestEscapeKey(t *testing.T) {
	for _, k := range []string{"", "a", "fmnist/00/00001.png", "a//b", "../x/", "a/../b", "dir/", "_", "__", "x__0x41__y",
		"__0x41__", "__0x41_", "__0xzz__", "__0x7fffffffff__", "é/ü__0x2f__", "tab\there", "a/b_", "_/_"} {
		if got, want := escapeKey(k), escapeKeySlow(k); got != want {
			t.Errorf("escapeKey(%q) = %q, want %q", k, got, want)
		}
	}
	if got := escapeKey("x__0x41__"); got != "x__0x5f___0x41__" {
		t.Errorf("escapeKey of an escape sequence = %q, want its first _ escaped", got)
	}
}
