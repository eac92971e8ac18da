package spec

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decoder walks a yaml.Node tree against a Go value by reflection, instead
// of yaml.Decoder.KnownFields, so that every error names the full field
// path and its line, all errors of a document are found in one pass, and the
// line of every field is known for errors Validate finds later.
type decoder struct {
	errs  []FieldError
	lines map[string]int // field path -> line
	// meant holds the fields that unknown ones were probably meant to be:
	// "spec.template: required" next to "spec.tempalte: unknown field" is
	// noise.
	meant map[string]bool
}

func reflectValue(r resource) reflect.Value { return reflect.ValueOf(r).Elem() }

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// decode stores n into v, which is the field at path. A null leaves v as it
// is.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	n = resolveAlias(n)
	if isNull(n) {
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		err := v.Addr().Interface().(yaml.Unmarshaler).UnmarshalYAML(n)
		var ie *itemError
		switch {
		case errors.As(err, &ie):
			d.fail(ie.line, fmt.Sprintf("%s[%d]", path, ie.index), "%s", ie.msg)
		case err != nil:
			d.fail(n.Line, path, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n.Line, path, "want a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n.Line, path, "want a mapping, got %s", describe(n))
			return
		}
		m := reflect.MakeMap(v.Type())
		for _, kv := range d.pairs(n, path) {
			p := keyPath(path, kv.key.Value)
			d.lines[p] = kv.key.Line
			elem := reflect.New(v.Type().Elem()).Elem()
			d.decode(kv.value, elem, p)
			m.SetMapIndex(reflect.ValueOf(kv.key.Value).Convert(v.Type().Key()), elem)
		}
		v.Set(m)
	case reflect.String:
		// Any scalar is a string, as in yaml.Unmarshal: env values such as
		// 1 or true mean "1" and "true".
		if n.Kind != yaml.ScalarNode {
			d.fail(n.Line, path, "want a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.fail(n.Line, path, "want an integer, got %s", describe(n))
			return
		}
		if v.OverflowInt(i) {
			d.fail(n.Line, path, "%s is out of range", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		var u uint64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&u) != nil {
			d.fail(n.Line, path, "want a non-negative integer, got %s", describe(n))
			return
		}
		if v.OverflowUint(u) {
			d.fail(n.Line, path, "%s is out of range", n.Value)
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&f) != nil {
			d.fail(n.Line, path, "want a number, got %s", describe(n))
			return
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(n.Line, path, "want a finite number, got %s", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.fail(n.Line, path, "want true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	default:
		// Only reachable by adding a field of a new Go type to types.go.
		panic(fmt.Sprintf("spec: cannot decode YAML into %s (%s)", v.Type(), path))
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "want a mapping, got %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	for _, kv := range d.pairs(n, path) {
		p := keyPath(path, kv.key.Value)
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == kv.key.Value })
		if i < 0 {
			if to, ok := movedFields[p]; ok {
				d.fail(kv.key.Line, p, "moved: write it as %s", to)
				continue
			}
			msg, meant := unknownField(kv.key.Value, fields)
			d.fail(kv.key.Line, p, "%s", msg)
			if meant != "" {
				d.meant[keyPath(path, meant)] = true
			}
			continue
		}
		d.lines[p] = kv.key.Line
		d.decode(kv.value, v.Field(fields[i].index), p)
	}
}

// movedFields are fields that moved elsewhere, by their old path: a spec
// that still uses one is told where it went.
var movedFields = map[string]string{
	"spec.evictionRate":     "spec.local.evictionRate",
	"spec.notice":           "spec.local.notice",
	"spec.capacityShortage": "spec.local.capacityShortage",
	"spec.noticeFormat":     "spec.local.noticeFormat",
}

type field struct {
	name  string // as in YAML
	index int
}

// yamlFields lists the fields of struct type t by their yaml tag names.
func yamlFields(t reflect.Type) []field {
	var fs []field
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		fs = append(fs, field{name, i})
	}
	return fs
}

// unknownField says a key is not a field, and which field was probably
// meant, if any.
func unknownField(key string, fields []field) (msg, meant string) {
	best, bestDist := "", math.MaxInt
	for _, f := range fields {
		if dist := editDistance(strings.ToLower(key), strings.ToLower(f.name)); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if bestDist <= max(1, min(3, len(key)/3)) {
		return fmt.Sprintf("unknown field (did you mean %q?)", best), best
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return "unknown field; known fields are " + strings.Join(names, ", "), ""
}

// editDistance is the optimal string alignment distance of a and b: the
// Levenshtein distance where swapping two neighbouring letters costs one,
// since that is the commonest typo.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// d[i][j] is the distance between ra[:i] and rb[:j].
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// itemError is an error in one item of a list that a yaml.Unmarshaler
// decodes, so that the decoder can name the item.
type itemError struct {
	index, line int
	msg         string
}

func (e *itemError) Error() string { return fmt.Sprintf("item %d: %s", e.index, e.msg) }

type keyValue struct{ key, value *yaml.Node }

// pairs returns the entries of mapping n, with the entries of merge keys
// ("<<: *anchor") that are not set explicitly. A key set twice is an error.
func (d *decoder) pairs(n *yaml.Node, path string) []keyValue {
	var explicit, merged []keyValue
	seen := map[string]int{} // key -> line
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolveAlias(n.Content[i]), n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merged = append(merged, d.mergePairs(v, path)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k.Line, path, "want a plain key, got %s", describe(k))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			d.fail(k.Line, keyPath(path, k.Value), "set twice (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		explicit = append(explicit, keyValue{k, v})
	}
	for _, kv := range merged {
		if _, ok := seen[kv.key.Value]; !ok {
			seen[kv.key.Value] = kv.key.Line
			explicit = append(explicit, kv)
		}
	}
	return explicit
}

// mergePairs returns the entries a merge key brings in: those of a mapping,
// or of a list of mappings where earlier ones win.
func (d *decoder) mergePairs(v *yaml.Node, path string) []keyValue {
	v = resolveAlias(v)
	switch v.Kind {
	case yaml.MappingNode:
		return d.pairs(v, path)
	case yaml.SequenceNode:
		var out []keyValue
		seen := map[string]bool{}
		for _, item := range v.Content {
			item = resolveAlias(item)
			if item.Kind != yaml.MappingNode {
				d.fail(item.Line, keyPath(path, "<<"), "want a mapping to merge, got %s", describe(item))
				continue
			}
			for _, kv := range d.pairs(item, path) {
				if !seen[kv.key.Value] {
					seen[kv.key.Value] = true
					out = append(out, kv)
				}
			}
		}
		return out
	}
	d.fail(v.Line, keyPath(path, "<<"), "want a mapping to merge, got %s", describe(v))
	return nil
}

func (d *decoder) fail(line int, path, format string, args ...any) {
	d.errs = append(d.errs, FieldError{Line: line, Field: path, Msg: fmt.Sprintf(format, args...)})
}

// lineOf returns the line of the field at path, or of its nearest ancestor
// present in the document when the field itself is missing.
func (d *decoder) lineOf(path string) int {
	for {
		if line, ok := d.lines[path]; ok {
			return line
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// explains reports whether a decoding error already covers a validation
// error at path: a field that failed to decode is left empty or half set,
// and "required" on top of "want an integer" would only confuse.
func (d *decoder) explains(path string) bool {
	for meant := range d.meant {
		if within(path, meant) {
			return true
		}
	}
	for _, e := range d.errs {
		if within(path, e.Field) || within(e.Field, path) {
			return true
		}
	}
	return false
}

// within reports whether path is inner or a field inside it.
func within(path, outer string) bool {
	if outer == "" || !strings.HasPrefix(path, outer) {
		return false
	}
	rest := path[len(outer):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
}

// keyPath returns the path of key inside the mapping at path.
func keyPath(path, key string) string {
	if key == "" || strings.ContainsAny(key, ".[]\" ") {
		return fmt.Sprintf("%s[%q]", path, key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe shows a node in an error message: got "three", got a list.
func describe(n *yaml.Node) string {
	n = resolveAlias(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if r := []rune(v); len(r) > 40 {
			v = string(r[:40]) + "…"
		}
		switch n.ShortTag() {
		case "!!str":
			return fmt.Sprintf("%q", v)
		case "!!null":
			return "null"
		}
		return v
	}
	return "nothing"
}
