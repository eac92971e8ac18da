package spec

import (
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestDecodeKinds covers the Go kinds no document type uses yet, so that a
// new kind of document can use them.
func TestDecodeKinds(t *testing.T) {
	type all struct {
		B  bool    `yaml:"b"`
		U  uint8   `yaml:"u"`
		I8 int8    `yaml:"i8"`
		F  float32 `yaml:"f"`
	}
	tests := []struct {
		in    string
		want  string // errors
		value all
	}{
		{in: "b: true\nu: 255\ni8: -128\nf: 1.5", value: all{true, 255, -128, 1.5}},
		{in: "b: yes", want: `line 1: b: want true or false, got "yes"`},
		{in: "u: -1", want: "line 1: u: want a non-negative integer, got -1"},
		{in: "u: 256", want: "line 1: u: 256 is out of range"},
		{in: "i8: 128", want: "line 1: i8: 128 is out of range"},
		{in: "f: .inf", want: "line 1: f: want a finite number, got .inf"},
		{in: "<<: {b: true, u: 2}\nb: false\nf: 1", value: all{U: 2, F: 1}},
		{in: "<<: [{u: 1}, {u: 2, b: true}]", value: all{B: true, U: 1}},
		{in: "<<: 3", want: "line 1: <<: want a mapping to merge, got 3"},
	}
	for _, tt := range tests {
		var root yaml.Node
		if err := yaml.Unmarshal([]byte(tt.in), &root); err != nil {
			t.Fatal(err)
		}
		var v all
		d := &decoder{lines: map[string]int{}, meant: map[string]bool{}}
		d.decode(root.Content[0], reflect.ValueOf(&v).Elem(), "")
		var got []string
		for _, e := range d.errs {
			got = append(got, e.Error())
		}
		if strings.Join(got, "\n") != tt.want {
			t.Errorf("decode %q: %q, want %q", tt.in, got, tt.want)
		}
		if tt.want == "" && v != tt.value {
			t.Errorf("decode %q = %+v, want %+v", tt.in, v, tt.value)
		}
	}
}
