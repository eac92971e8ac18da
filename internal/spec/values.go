package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// String returns the shortest form, "1h30m" rather than "1h30m0s". This is
// how a Duration is written in YAML and JSON; reading one, a bare number is
// refused, as 30 could mean seconds or minutes.
func (d Duration) String() string {
	s := d.Duration.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// IsZero lets yaml omitempty and json omitzero leave an unset duration out.
func (d Duration) IsZero() bool { return d.Duration == 0 }

func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!bool" {
		return fmt.Errorf(`want a duration like "30s", got %s`, describe(n))
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	var s string
	if data[0] != '"' {
		// A number: parseDuration says to add a unit.
		s = string(data)
	} else if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

var bareNumber = regexp.MustCompile(`^[-+]?[0-9]+(\.[0-9]*)?$`)

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if bareNumber.MatchString(s) {
		return 0, fmt.Errorf(`%s has no unit; add one, like "%ss" or "%sm"`, s, s, s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf(`want a duration like "30s", "2m" or "1h30m", got %q`, s)
	}
	return d, nil
}

// byteUnits are the suffixes of Bytes, largest first within each family,
// binary ones first so that String prefers "2Gi" to "2147483648", and "k"
// before "K" so that String writes "k".
var byteUnits = []struct {
	suffix string
	size   int64
}{
	{"Ei", 1 << 60}, {"Pi", 1 << 50}, {"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"E", 1e18}, {"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}, {"K", 1e3},
}

var bytesSyntax = regexp.MustCompile(`^([-+]?[0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// ParseBytes reads a size such as "512Mi", "2Gi", "1G", "100M", "1.5Gi" or
// "1024" (bytes). Binary suffixes are Ki, Mi, Gi, Ti, Pi, Ei; decimal ones
// k (or K), M, G, T, P, E.
func ParseBytes(s string) (Bytes, error) {
	m := bytesSyntax.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf(`want a size like "512Mi", "2Gi" or "1G", got %q`, s)
	}
	size := int64(1)
	if m[2] != "" {
		size = 0
		for _, u := range byteUnits {
			if u.suffix == m[2] {
				size = u.size
			}
		}
		if size == 0 {
			return 0, fmt.Errorf(`%q has an unknown unit %q; use Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)`, s, m[2])
		}
	}
	r, ok := new(big.Rat).SetString(m[1])
	if !ok {
		return 0, fmt.Errorf(`want a size like "512Mi", "2Gi" or "1G", got %q`, s)
	}
	r.Mul(r, new(big.Rat).SetInt64(size))
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Bytes(r.Num().Int64()), nil
}

// String writes b with the largest unit that divides it exactly, binary
// units first: 2Gi, 1G, 1536.
func (b Bytes) String() string {
	if b != 0 {
		for _, u := range byteUnits {
			if int64(b)%u.size == 0 {
				return strconv.FormatInt(int64(b)/u.size, 10) + u.suffix
			}
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func (b Bytes) MarshalYAML() (any, error) {
	if s := b.String(); s != strconv.FormatInt(int64(b), 10) {
		return s, nil
	}
	return int64(b), nil
}

func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		return fmt.Errorf(`want a size like "512Mi", "2Gi" or "1G", got %s`, describe(n))
	}
	v, err := ParseBytes(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalJSON writes a plain number of bytes, easiest for programs.
func (b Bytes) MarshalJSON() ([]byte, error) { return []byte(strconv.FormatInt(int64(b), 10)), nil }

// UnmarshalJSON reads a number of bytes or a string such as "2Gi".
func (b *Bytes) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	if data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err := ParseBytes(s)
		if err != nil {
			return err
		}
		*b = v
		return nil
	}
	v, err := strconv.ParseInt(string(data), 10, 64)
	if err != nil {
		return fmt.Errorf(`want a whole number of bytes or a size like "2Gi", got %s`, data)
	}
	*b = Bytes(v)
	return nil
}

// ShellCommand returns the Command that runs script through /bin/sh -c, as
// a single string in YAML does.
func ShellCommand(script string) Command { return Command{"/bin/sh", "-c", script} }

// MarshalYAML writes a shell command back as the single string it was.
func (c Command) MarshalYAML() (any, error) {
	if s, ok := c.script(); ok {
		return s, nil
	}
	return []string(c), nil
}

func (c *Command) UnmarshalYAML(n *yaml.Node) error {
	n = resolveAlias(n)
	switch {
	case isNull(n):
		return nil
	case n.Kind == yaml.ScalarNode:
		*c = Command{}
		if n.Value != "" {
			*c = ShellCommand(n.Value)
		}
		return nil
	case n.Kind == yaml.SequenceNode:
		argv := make(Command, len(n.Content))
		for i, item := range n.Content {
			item = resolveAlias(item)
			if item.Kind != yaml.ScalarNode || isNull(item) {
				return &itemError{index: i, line: item.Line, msg: "want a string, got " + describe(item)}
			}
			argv[i] = item.Value
		}
		*c = argv
		return nil
	}
	return fmt.Errorf("want a list of strings (argv) or a string (run by /bin/sh -c), got %s", describe(n))
}

// MarshalJSON always writes an array: programs should not have to guess.
func (c Command) MarshalJSON() ([]byte, error) {
	if c == nil {
		return []byte("null"), nil
	}
	return json.Marshal([]string(c))
}

// UnmarshalJSON reads an array of strings, or a string run by /bin/sh -c.
func (c *Command) UnmarshalJSON(data []byte) error {
	switch {
	case string(data) == "null":
		return nil
	case data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*c = Command{}
		if s != "" {
			*c = ShellCommand(s)
		}
		return nil
	}
	var argv []string
	if err := json.Unmarshal(data, &argv); err != nil {
		return errors.New("want an array of strings (argv) or a string (run by /bin/sh -c)")
	}
	if argv == nil {
		argv = []string{}
	}
	*c = argv
	return nil
}

// script returns the script of a command that runs through /bin/sh -c.
func (c Command) script() (string, bool) {
	if len(c) == 3 && c[0] == "/bin/sh" && c[1] == "-c" {
		return c[2], true
	}
	return "", false
}
