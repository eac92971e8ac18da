package spec

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestDurationRoundTrip(t *testing.T) {
	tests := []struct {
		in   string // YAML
		want time.Duration
		out  string // String, YAML and JSON string
	}{
		{"30s", 30 * time.Second, "30s"},
		{"2m", 2 * time.Minute, "2m"},
		{"1h30m", 90 * time.Minute, "1h30m"},
		{"90m", 90 * time.Minute, "1h30m"},
		{"2h", 2 * time.Hour, "2h"},
		{"1h0m5s", time.Hour + 5*time.Second, "1h0m5s"},
		{"10s", 10 * time.Second, "10s"},
		{"1.5s", 1500 * time.Millisecond, "1.5s"},
		{"250ms", 250 * time.Millisecond, "250ms"},
		{`"0s"`, 0, "0s"},
	}
	for _, tt := range tests {
		var d Duration
		if err := yaml.Unmarshal([]byte(tt.in), &d); err != nil {
			t.Errorf("YAML %s: %v", tt.in, err)
			continue
		}
		if d.Duration != tt.want {
			t.Errorf("YAML %s = %v, want %v", tt.in, d.Duration, tt.want)
		}
		if d.String() != tt.out {
			t.Errorf("String(%v) = %q, want %q", tt.want, d.String(), tt.out)
		}
		y, err := yaml.Marshal(d)
		if err != nil || strings.TrimSpace(string(y)) != tt.out {
			t.Errorf("yaml.Marshal(%v) = %q, %v; want %q", tt.want, y, err, tt.out)
		}
		j, err := json.Marshal(d)
		if err != nil || string(j) != `"`+tt.out+`"` {
			t.Errorf("json.Marshal(%v) = %s, %v; want %q", tt.want, j, err, tt.out)
		}
		var back Duration
		if err := json.Unmarshal(j, &back); err != nil || back != d {
			t.Errorf("json round trip of %v = %v, %v", d, back, err)
		}
	}
}

func TestDurationErrors(t *testing.T) {
	tests := []struct{ yaml, json, want string }{
		{"30", "30", `30 has no unit; add one, like "30s" or "30m"`},
		{`"30"`, `"30"`, `30 has no unit; add one, like "30s" or "30m"`},
		{"1.5", "1.5", `1.5 has no unit; add one, like "1.5s" or "1.5m"`},
		{"soon", `"soon"`, `want a duration like "30s", "2m" or "1h30m", got "soon"`},
		{"[1s]", `["1s"]`, `want a duration like "30s"`},
		{"true", `true`, `want a duration like "30s"`},
	}
	for _, tt := range tests {
		var d Duration
		if err := yaml.Unmarshal([]byte(tt.yaml), &d); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("YAML %s: err = %v, want %q", tt.yaml, err, tt.want)
		}
		if err := json.Unmarshal([]byte(tt.json), &d); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("JSON %s: err = %v, want %q", tt.json, err, tt.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want Bytes
		out  string // String
	}{
		{"0", 0, "0"},
		{"1024", 1024, "1Ki"},
		{"1536", 1536, "1536"},
		{"512Mi", 512 << 20, "512Mi"},
		{"2Gi", 2 << 30, "2Gi"},
		{"1.5Gi", 3 << 29, "1536Mi"},
		{"1G", 1e9, "1G"},
		{"100M", 100e6, "100M"},
		{"2k", 2000, "2k"},
		{"2K", 2000, "2k"},
		{"1000Mi", 1000 << 20, "1000Mi"},
		{"1Ti", 1 << 40, "1Ti"},
		{"1Ei", 1 << 60, "1Ei"},
		{"0.5Ki", 512, "512"},
		{" 3Gi ", 3 << 30, "3Gi"},
		{"-1Gi", -1 << 30, "-1Gi"},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			continue
		}
		if got.String() != tt.out {
			t.Errorf("Bytes(%d).String() = %q, want %q", got, got.String(), tt.out)
		}
	}
	for _, bad := range []string{"", "Gi", "2GB", "2 gigabytes", "1.2.3Mi", "0.3Ki", "8Ei", "1e3", "0x10"} {
		if got, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", bad, got)
		}
	}
}

func TestBytesRoundTrip(t *testing.T) {
	for _, b := range []Bytes{0, 1, 1536, 1 << 10, 512 << 20, 2 << 30, 1e9, 100e6, 1<<63 - 1} {
		y, err := yaml.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var fromYAML Bytes
		if err := yaml.Unmarshal(y, &fromYAML); err != nil || fromYAML != b {
			t.Errorf("YAML round trip of %d via %q = %d, %v", b, y, fromYAML, err)
		}
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if string(j) != strconv.FormatInt(int64(b), 10) {
			t.Errorf("json.Marshal(%d) = %s, want a plain number", b, j)
		}
		var fromJSON Bytes
		if err := json.Unmarshal(j, &fromJSON); err != nil || fromJSON != b {
			t.Errorf("JSON round trip of %d via %s = %d, %v", b, j, fromJSON, err)
		}
	}

	// YAML writes sizes the way people do, and JSON also reads them so.
	if y, _ := yaml.Marshal(Bytes(2 << 30)); strings.TrimSpace(string(y)) != "2Gi" {
		t.Errorf("yaml.Marshal(2Gi) = %q", y)
	}
	var b Bytes
	if err := json.Unmarshal([]byte(`"512Mi"`), &b); err != nil || b != 512<<20 {
		t.Errorf(`JSON "512Mi" = %d, %v`, b, err)
	}
	for _, bad := range []string{`1.5`, `"2GB"`, `true`, `[]`} {
		if err := json.Unmarshal([]byte(bad), &b); err == nil {
			t.Errorf("JSON %s: want an error", bad)
		}
	}
}

func TestCommandRoundTrip(t *testing.T) {
	tests := []struct {
		yaml     string
		want     Command
		yamlOut  string
		jsonOut  string
		jsonAlso string // another JSON input that means the same
	}{
		{
			yaml:    "[python, train.py, --lr, '0.1']",
			want:    Command{"python", "train.py", "--lr", "0.1"},
			yamlOut: "- python\n- train.py\n- --lr\n- \"0.1\"",
			jsonOut: `["python","train.py","--lr","0.1"]`,
		},
		{
			yaml:     "echo hello && sleep 1",
			want:     Command{"/bin/sh", "-c", "echo hello && sleep 1"},
			yamlOut:  "echo hello && sleep 1",
			jsonOut:  `["/bin/sh","-c","echo hello \u0026\u0026 sleep 1"]`,
			jsonAlso: `"echo hello && sleep 1"`,
		},
		{
			yaml:    "[/bin/sh, -c, exit 3]",
			want:    Command{"/bin/sh", "-c", "exit 3"},
			yamlOut: "exit 3",
			jsonOut: `["/bin/sh","-c","exit 3"]`,
		},
		{
			yaml:    "[true]",
			want:    Command{"true"},
			yamlOut: "- \"true\"",
			jsonOut: `["true"]`,
		},
	}
	for _, tt := range tests {
		var c Command
		if err := yaml.Unmarshal([]byte(tt.yaml), &c); err != nil || !reflect.DeepEqual(c, tt.want) {
			t.Errorf("YAML %s = %q, %v; want %q", tt.yaml, c, err, tt.want)
			continue
		}
		y, err := yaml.Marshal(c)
		if err != nil || strings.TrimSpace(string(y)) != tt.yamlOut {
			t.Errorf("yaml.Marshal(%q) = %q, %v; want %q", c, y, err, tt.yamlOut)
		}
		var fromYAML Command
		if err := yaml.Unmarshal(y, &fromYAML); err != nil || !reflect.DeepEqual(fromYAML, c) {
			t.Errorf("YAML round trip of %q = %q, %v", c, fromYAML, err)
		}
		j, err := json.Marshal(c)
		if err != nil || string(j) != tt.jsonOut {
			t.Errorf("json.Marshal(%q) = %s, %v; want %s", c, j, err, tt.jsonOut)
		}
		for _, in := range []string{string(j), tt.jsonAlso} {
			if in == "" {
				continue
			}
			var fromJSON Command
			if err := json.Unmarshal([]byte(in), &fromJSON); err != nil || !reflect.DeepEqual(fromJSON, c) {
				t.Errorf("JSON %s = %q, %v; want %q", in, fromJSON, err, c)
			}
		}
	}
	for _, bad := range []string{"{run: x}", "[a, [b]]", "[a, {b: c}]", "[a, ~]"} {
		var c Command
		if err := yaml.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("YAML %s: want an error", bad)
		}
	}
	for _, bad := range []string{`{"run": "x"}`, `["a", 1]`, `3`} {
		var c Command
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("JSON %s: want an error", bad)
		}
	}
}
