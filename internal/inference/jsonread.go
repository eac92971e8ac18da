package inference

import (
	"encoding/json"
	"errors"
	"fmt"
)

// reader is a strict, single-pass JSON reader over a request body.
//
// An inference request is mostly numbers (784 for one Fashion-MNIST image).
// encoding/json would either box every number in an interface or, with
// json.RawMessage, scan the body twice before the numbers are parsed; on a
// small model that costs more than running it. The reader walks the body
// once, hands each number to a typed parser as bytes, and skips what it does
// not need, while still refusing anything that is not JSON.
type reader struct {
	b     []byte
	i     int
	depth int
}

// maxDepth bounds nesting: arrays are parsed recursively, and a body of 16
// MiB of '[' must not exhaust the stack.
const maxDepth = 64

var errJSON = errors.New("invalid JSON")

func (r *reader) errorf(format string, args ...any) error {
	return fmt.Errorf("%w at byte %d: %s", errJSON, r.i, fmt.Sprintf(format, args...))
}

// peek skips white space and returns the next byte without consuming it (0 at
// the end of the body).
func (r *reader) peek() byte {
	for r.i < len(r.b) {
		switch c := r.b[r.i]; c {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return c
		}
	}
	return 0
}

// firstElement returns the first byte of the first element of the array the
// reader is at, without moving (0 for an empty array).
func (r *reader) firstElement() byte {
	at := r.i
	defer func() { r.i = at }()
	r.i++ // '['
	if c := r.peek(); c != ']' {
		return c
	}
	return 0
}

// end checks that nothing but white space follows the value read.
func (r *reader) end() error {
	if r.peek(); r.i < len(r.b) { // not peek() != 0: a NUL byte is data too
		return r.errorf("unexpected data after the top-level value")
	}
	return nil
}

// object reads an object, calling member for each key with the reader at the
// key's value; member must read that value.
func (r *reader) object(member func(key string) error) error {
	if err := r.enter('{', "an object"); err != nil {
		return err
	}
	if r.peek() == '}' {
		return r.leave()
	}
	for {
		if r.peek() != '"' {
			return r.errorf("expected a string (an object key)")
		}
		key, err := r.string()
		if err != nil {
			return err
		}
		if r.peek() != ':' {
			return r.errorf("expected ':' after an object key")
		}
		r.i++
		if err := member(key); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case '}':
			return r.leave()
		default:
			return r.errorf("expected ',' or '}' in an object")
		}
	}
}

// array reads an array, calling elem with the reader at each element; elem
// must read it.
func (r *reader) array(elem func() error) error {
	if err := r.enter('[', "an array"); err != nil {
		return err
	}
	if r.peek() == ']' {
		return r.leave()
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case ']':
			return r.leave()
		default:
			return r.errorf("expected ',' or ']' in an array")
		}
	}
}

func (r *reader) enter(open byte, what string) error {
	if r.peek() != open {
		return r.errorf("expected %s", what)
	}
	if r.depth == maxDepth {
		return r.errorf("nested more than %d deep", maxDepth)
	}
	r.i++
	r.depth++
	return nil
}

func (r *reader) leave() error {
	r.i++
	r.depth--
	return nil
}

// string reads a string. Escapes are rare in names and ids, so only a string
// that has one goes through encoding/json to be decoded.
func (r *reader) string() (string, error) {
	if r.peek() != '"' {
		return "", r.errorf("expected a string")
	}
	start := r.i
	escaped := false
	for r.i++; r.i < len(r.b); r.i++ {
		switch c := r.b[r.i]; {
		case c == '"':
			r.i++
			raw := r.b[start:r.i]
			if !escaped {
				return string(raw[1 : len(raw)-1]), nil
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				r.i = start
				return "", r.errorf("bad escape in a string")
			}
			return s, nil
		case c == '\\':
			escaped = true
			r.i++ // the escaped byte cannot end the string
		case c < 0x20:
			return "", r.errorf("control character in a string")
		}
	}
	return "", r.errorf("unterminated string")
}

// scalar reads a number, true, false or null and returns its bytes.
func (r *reader) scalar() ([]byte, error) {
	switch c := r.peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		return r.number()
	case c == 't':
		return r.literal("true")
	case c == 'f':
		return r.literal("false")
	case c == 'n':
		return r.literal("null")
	case c == '"':
		return nil, r.errorf("strings are not supported as tensor elements")
	case c == 0:
		return nil, r.errorf("unexpected end of the body")
	}
	return nil, r.errorf("unexpected character %q", r.b[r.i])
}

// number reads a number as JSON defines it:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (r *reader) number() ([]byte, error) {
	start := r.i
	b := r.b
	i := r.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		r.i = i
		return nil, r.errorf("malformed number")
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			r.i = j
			return nil, r.errorf("malformed number: no digits after '.'")
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			r.i = j
			return nil, r.errorf("malformed number: no digits in the exponent")
		}
		i = j
	}
	r.i = i
	return b[start:i], nil
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func (r *reader) literal(lit string) ([]byte, error) {
	if len(r.b)-r.i < len(lit) || string(r.b[r.i:r.i+len(lit)]) != lit {
		return nil, r.errorf("unexpected characters (expected %s)", lit)
	}
	r.i += len(lit)
	return r.b[r.i-len(lit) : r.i], nil
}

// value reads any value and returns its bytes: for what a request may carry
// but spotml does not use (parameters, unknown fields).
func (r *reader) value() ([]byte, error) {
	start := r.peek()
	from := r.i
	var err error
	switch start {
	case '{':
		err = r.object(func(string) error { _, err := r.value(); return err })
	case '[':
		err = r.array(func() error { _, err := r.value(); return err })
	case '"':
		_, err = r.string()
	default:
		_, err = r.scalar()
	}
	if err != nil {
		return nil, err
	}
	return r.b[from:r.i], nil
}

// notAnObject is the error for a value that should have been an object:
// the JSON error when it is not even valid JSON, else the message given.
func notAnObject(r *reader, format string, args ...any) error {
	if _, err := r.value(); err != nil {
		return err
	}
	return invalidf(format, args...)
}

// asInvalid makes any decoding error the caller's: a body that is not JSON
// is as much a bad request as a wrong shape.
func asInvalid(err error) error {
	if errors.Is(err, ErrInvalidInput) {
		return err
	}
	return invalidf("%v", err)
}

// parseArray reads a JSON array nested to any depth whose leaves are
// scalars (or a lone scalar, shape []), returning its shape and its leaves in
// row-major order, each converted by leaf. Ragged arrays are refused. hint is
// how many leaves to expect, when known.
func parseArray[T any](r *reader, hint int, leaf func(tok []byte) (T, error)) ([]int64, []T, error) {
	return parse(&arrayParser[T]{r: r, leaf: leaf, rank: -1, vals: make([]T, 0, hint)})
}

// parseElems is parseArray for elements that are not scalars (BYTES'
// strings and {"b64"} objects): elem reads each.
func parseElems[T any](r *reader, hint int, elem func(r *reader) (T, error)) ([]int64, []T, error) {
	return parse(&arrayParser[T]{r: r, elem: elem, rank: -1, vals: make([]T, 0, hint)})
}

func parse[T any](p *arrayParser[T]) ([]int64, []T, error) {
	r := p.r
	if r.peek() != '[' {
		if err := p.scalar(); err != nil {
			return nil, nil, err
		}
		return []int64{}, p.vals, nil
	}
	if err := p.array(0); err != nil {
		return nil, nil, err
	}
	return p.shape, p.vals, nil
}

type arrayParser[T any] struct {
	r    *reader
	leaf func([]byte) (T, error)
	elem func(*reader) (T, error) // instead of leaf
	// fast, when set, reads a flat array of numbers at once (fastFloats).
	fast func(b []byte, i int, vals []T) (end int, out []T, n int, ok bool)
	// shape[d] is the length of the arrays at depth d, -1 until the first
	// of them closes.
	shape []int64
	// rank is how deep arrays nest, -1 until the first leaf (or empty
	// array) shows it.
	rank int
	vals []T
}

func (p *arrayParser[T]) array(d int) error {
	if d == len(p.shape) {
		p.shape = append(p.shape, -1)
	}
	if p.fast != nil && (p.rank < 0 || p.rank == d+1) && p.r.depth < maxDepth {
		if end, vals, n, ok := p.fast(p.r.b, p.r.i, p.vals); ok && n > 0 {
			p.vals, p.r.i = vals, end
			if err := p.setRank(d + 1); err != nil {
				return err
			}
			return p.closed(d, int64(n))
		}
	}
	n := int64(0)
	err := p.r.array(func() error {
		n++
		if p.r.peek() == '[' {
			if p.rank >= 0 && d+1 >= p.rank {
				return p.ragged()
			}
			return p.array(d + 1)
		}
		if err := p.setRank(d + 1); err != nil {
			return err
		}
		return p.scalar()
	})
	if err != nil {
		return err
	}
	if n == 0 {
		if err := p.setRank(d + 1); err != nil {
			return err
		}
	}
	return p.closed(d, n)
}

// closed records that an array at depth d had n elements.
func (p *arrayParser[T]) closed(d int, n int64) error {
	switch p.shape[d] {
	case -1:
		p.shape[d] = n
	case n:
	default:
		return p.ragged()
	}
	return nil
}

func (p *arrayParser[T]) setRank(rank int) error {
	if p.rank < 0 {
		p.rank = rank
	} else if p.rank != rank {
		return p.ragged()
	}
	return nil
}

func (p *arrayParser[T]) scalar() error {
	at := p.r.i
	if p.elem != nil {
		v, err := p.elem(p.r)
		if err != nil {
			return fmt.Errorf("%w (at byte %d)", err, at)
		}
		p.vals = append(p.vals, v)
		return nil
	}
	tok, err := p.r.scalar()
	if err != nil {
		return err
	}
	v, err := p.leaf(tok)
	if err != nil {
		return fmt.Errorf("%w (at byte %d)", err, at)
	}
	p.vals = append(p.vals, v)
	return nil
}

func (p *arrayParser[T]) ragged() error {
	return p.r.errorf("ragged array: every row must have the same shape")
}
