package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Document is one resource of a YAML file. Exactly one of Pool, Job and
// Service is set, as Kind says.
type Document struct {
	Kind    string   `json:"kind"`
	Name    string   `json:"name"`
	Pool    *Pool    `json:"pool,omitempty"`
	Job     *Job     `json:"job,omitempty"`
	Service *Service `json:"service,omitempty"`
	// BatchInference is set for kind BatchInference.
	BatchInference *BatchInference `json:"batchInference,omitempty"`
	Line           int             `json:"line"` // where the document starts in its file
}

// ErrInvalid is what every *Error is (errors.Is), so that callers can tell a
// bad document from a failure to read one.
var ErrInvalid = errors.New("invalid spec")

// Error lists everything wrong with one or more documents.
type Error struct {
	File   string // prefixed to each line when set
	Errors []FieldError
}

// FieldError is one thing wrong with one field.
type FieldError struct {
	Line  int    // 0 when unknown (JSON input)
	Field string // path such as spec.tasks[1].maxRetries; empty for syntax errors
	Msg   string
}

// Parse reads a stream of YAML documents separated by "---", skipping empty
// ones. Each document is decoded strictly, defaulted and validated. If any
// document is wrong, Parse returns no documents and an *Error listing every
// problem found, in line order.
func Parse(data []byte) ([]Document, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []Document
	var errs []FieldError
	defined := map[string]int{} // kind/name -> line
	for {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// The parser cannot resynchronise after a syntax error.
			errs = append(errs, syntaxError(err))
			break
		}
		if fe := checkAliases(&root); fe != nil {
			errs = append(errs, *fe)
			continue
		}
		doc, nameLine, docErrs, ok := parseDocument(&root)
		if !ok {
			continue
		}
		if len(docErrs) > 0 {
			errs = append(errs, docErrs...)
			continue
		}
		key := doc.Kind + "/" + doc.Name
		if line, dup := defined[key]; dup {
			errs = append(errs, FieldError{Line: nameLine, Field: "metadata.name",
				Msg: fmt.Sprintf("%s %q is already defined at line %d", doc.Kind, doc.Name, line)})
			continue
		}
		defined[key] = nameLine
		docs = append(docs, doc)
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b FieldError) int { return a.Line - b.Line })
		return nil, &Error{Errors: errs}
	}
	return docs, nil
}

// ParseFile is Parse on a file's contents; errors name the file.
func ParseFile(path string) ([]Document, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	docs, err := Parse(data)
	var e *Error
	if errors.As(err, &e) {
		e.File = path
	}
	return docs, err
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, fe := range e.Errors {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			b.WriteString(": ")
		}
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalid) true for every *Error.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func (fe FieldError) Error() string {
	var b strings.Builder
	if fe.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", fe.Line)
	}
	if fe.Field != "" {
		b.WriteString(fe.Field)
		b.WriteString(": ")
	}
	b.WriteString(fe.Msg)
	return b.String()
}

// resource is what every kind of document is.
type resource interface {
	Default()
	Validate() error
	name() string
}

var (
	_ resource = (*Pool)(nil)
	_ resource = (*Job)(nil)
	_ resource = (*Service)(nil)
	_ resource = (*BatchInference)(nil)
)

// kinds are the document kinds Parse accepts. Adding a kind takes a line
// here, a field in Document, and Default, Validate and name methods.
var kinds = []struct {
	kind string
	new  func(*Document) resource
}{
	{KindPool, func(d *Document) resource { d.Pool = new(Pool); return d.Pool }},
	{KindJob, func(d *Document) resource { d.Job = new(Job); return d.Job }},
	{KindService, func(d *Document) resource { d.Service = new(Service); return d.Service }},
	{KindBatchInference, func(d *Document) resource { d.BatchInference = new(BatchInference); return d.BatchInference }},
}

func (p *Pool) name() string { return p.Metadata.Name }
func (j *Job) name() string  { return j.Metadata.Name }

// parseDocument decodes, defaults and validates one document. ok is false
// for an empty document.
func parseDocument(root *yaml.Node) (doc Document, nameLine int, errs []FieldError, ok bool) {
	n := root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return doc, 0, nil, false
		}
		n = n.Content[0]
	}
	n = resolveAlias(n)
	if isNull(n) {
		return doc, 0, nil, false
	}
	doc.Line = n.Line
	if n.Kind != yaml.MappingNode {
		return doc, 0, []FieldError{{Line: n.Line,
			Msg: "want a mapping with apiVersion, kind, metadata and spec, got " + describe(n)}}, true
	}

	kindNode := mappingValue(n, "kind")
	var known []string
	for _, k := range kinds {
		known = append(known, strconv.Quote(k.kind))
	}
	switch {
	case kindNode == nil || isNull(kindNode):
		return doc, 0, []FieldError{{Line: n.Line, Field: "kind",
			Msg: "required; use one of " + strings.Join(known, ", ")}}, true
	case kindNode.Kind != yaml.ScalarNode:
		return doc, 0, []FieldError{{Line: kindNode.Line, Field: "kind",
			Msg: "want a string, got " + describe(kindNode)}}, true
	}
	var res resource
	for _, k := range kinds {
		if k.kind == kindNode.Value {
			doc.Kind = k.kind
			res = k.new(&doc)
		}
	}
	if res == nil {
		return doc, 0, []FieldError{{Line: kindNode.Line, Field: "kind",
			Msg: fmt.Sprintf("%q is not a kind spotml knows; use one of %s", kindNode.Value, strings.Join(known, ", "))}}, true
	}

	d := &decoder{lines: map[string]int{"": n.Line}, meant: map[string]bool{}}
	d.decode(n, reflectValue(res), "")
	res.Default()
	errs = d.errs
	var verr *Error
	if errors.As(res.Validate(), &verr) {
		for _, fe := range verr.Errors {
			if d.explains(fe.Field) {
				continue
			}
			fe.Line = d.lineOf(fe.Field)
			errs = append(errs, fe)
		}
	}
	doc.Name = res.name()
	return doc, d.lineOf("metadata.name"), errs, true
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func syntaxError(err error) FieldError {
	msg := err.Error()
	if m := yamlLineError.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return FieldError{Line: line, Msg: m[2]}
	}
	return FieldError{Msg: strings.TrimPrefix(msg, "yaml: ")}
}

// mappingValue returns the value of key in mapping n, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return resolveAlias(n.Content[i+1])
		}
	}
	return nil
}
