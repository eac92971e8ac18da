package inference

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// DataType names a tensor's element type the way the Open Inference Protocol
// (KServe v2) does: FP32, INT64, BOOL, ...
type DataType string

// The element types a model's inputs and outputs may have. BF16 models can
// be described but not served.
const (
	BOOL   DataType = "BOOL"
	UINT8  DataType = "UINT8"
	UINT16 DataType = "UINT16"
	UINT32 DataType = "UINT32"
	UINT64 DataType = "UINT64"
	INT8   DataType = "INT8"
	INT16  DataType = "INT16"
	INT32  DataType = "INT32"
	INT64  DataType = "INT64"
	FP16   DataType = "FP16"
	FP32   DataType = "FP32"
	FP64   DataType = "FP64"
	BF16   DataType = "BF16"
	BYTES  DataType = "BYTES"
)

// Tensor is one named input or output.
type Tensor struct {
	Name string
	// Shape has one entry per dimension; the first is the batch dimension
	// (rows) for models that batch.
	Shape []int64
	// Data holds the elements in row-major order, as a slice of the element
	// type: []float32 for FP32, []float64 for FP64, []int64 for INT64, []bool
	// for BOOL, and so on; []Float16 for FP16 and [][]byte for BYTES.
	Data any
}

// DataType reports the element type of t's Data ("" for an unsupported
// slice type).
func (t Tensor) DataType() DataType {
	for _, k := range kinds {
		if k.is(t.Data) {
			return k.dt
		}
	}
	return ""
}

// TensorInfo describes one of a model's inputs or outputs. Dimensions the
// model leaves open (dynamic) are -1.
type TensorInfo struct {
	Name     string
	DataType DataType
	Shape    []int64
}

// kind is everything spotml does with one element type, so that the rest of
// the package handles tensors of any supported type without type switches.
// Built once by newKind for each Go element type.
type kind struct {
	dt     DataType
	ort    ort.TensorElementDataType
	tfType string // the TensorFlow name, for TF Serving's metadata

	is     func(data any) bool
	length func(data any) int
	make   func(n int) any
	// copyAt copies src into dst starting at element off.
	copyAt func(dst any, off int, src any)
	slice  func(data any, lo, hi int) any
	// tensor wraps data (not copied) as an ONNX Runtime tensor.
	tensor func(shape ort.Shape, data any) (ort.Value, error)
	// data returns the Go slice behind an ONNX Runtime tensor of this kind.
	data func(v ort.Value) (any, bool)
	// parse reads a JSON array of any nesting (or a scalar) of this type.
	// hint is how many elements to expect, when known.
	parse func(r *reader, hint int) (shape []int64, data any, err error)
	// appendJSON appends data[lo:hi] as a flat JSON array's elements.
	appendJSON func(buf []byte, data any, lo, hi int) []byte
	// size is the bytes of one element in the binary tensor format and
	// in gRPC's raw contents; 0 for BYTES, whose elements each carry a
	// 4-byte length.
	size int
	// fromRaw decodes n elements in the binary format (little-endian,
	// row-major); appendRaw encodes data[lo:hi] in it.
	fromRaw   func(b []byte, n int) (any, error)
	appendRaw func(buf []byte, data any, lo, hi int) []byte
	// view is fromRaw without the copy, for bytes the caller will not
	// reuse (a gRPC message's): ok is false where b is not aligned for the
	// element type, or the kind cannot be viewed (BOOL and BYTES need
	// checking or decoding).
	view func(b []byte, n int) (data any, ok bool)
}

type element interface {
	~bool | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~int8 | ~int16 | ~int32 | ~int64 | ~float32 | ~float64
}

func newKind[T element](dt DataType, ortType ort.TensorElementDataType, tfType string,
	leaf func(tok []byte) (T, bool), appendLeaf func([]byte, T) []byte) *kind {
	size := int(unsafe.Sizeof(*new(T)))
	return &kind{
		dt: dt, ort: ortType, tfType: tfType, size: size,
		fromRaw: func(b []byte, n int) (any, error) {
			if len(b) != n*size {
				return nil, fmt.Errorf("%d bytes of %s data for %d elements, which take %d", len(b), dt, n, n*size)
			}
			out := make([]T, n)
			copy(rawBytes(out), b) // little-endian both: spotml runs on amd64 and arm64
			if dt == BOOL {
				for i, c := range b {
					if c > 1 {
						return nil, fmt.Errorf("BOOL element %d is byte %d; booleans are 0 or 1", i, c)
					}
				}
			}
			return out, nil
		},
		appendRaw: func(buf []byte, d any, lo, hi int) []byte {
			return append(buf, rawBytes(d.([]T)[lo:hi])...)
		},
		view: func(b []byte, n int) (any, bool) {
			if dt == BOOL || len(b) != n*size || n == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(size) != 0 {
				return nil, false
			}
			return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n), true
		},
		is:     func(d any) bool { _, ok := d.([]T); return ok },
		length: func(d any) int { return len(d.([]T)) },
		make:   func(n int) any { return make([]T, n) },
		copyAt: func(dst any, off int, src any) { copy(dst.([]T)[off:], src.([]T)) },
		slice:  func(d any, lo, hi int) any { return d.([]T)[lo:hi:hi] },
		tensor: func(s ort.Shape, d any) (ort.Value, error) { return ort.NewTensor(s, d.([]T)) },
		data: func(v ort.Value) (any, bool) {
			t, ok := v.(*ort.Tensor[T])
			if !ok {
				return nil, false
			}
			return t.GetData(), true
		},
		parse: func(r *reader, hint int) ([]int64, any, error) {
			p := &arrayParser[T]{r: r, rank: -1, vals: make([]T, 0, hint), fast: fastFloatsFor[T](),
				leaf: func(tok []byte) (T, error) {
					v, ok := leaf(tok)
					if !ok {
						return v, fmt.Errorf("%s is not a valid %s value", tok, dt)
					}
					return v, nil
				}}
			shape, vals, err := parse(p)
			return shape, vals, err
		},
		appendJSON: func(buf []byte, d any, lo, hi int) []byte {
			for i, v := range d.([]T)[lo:hi] {
				if i > 0 {
					buf = append(buf, ',')
				}
				buf = appendLeaf(buf, v)
			}
			return buf
		},
	}
}

// fastFloatsFor is fastFloats for FP32 and FP64 kinds, nil for others.
func fastFloatsFor[T element]() func([]byte, int, []T) (int, []T, int, bool) {
	switch any(*new(T)).(type) {
	case float32:
		f, _ := any(fastFloats[float32]).(func([]byte, int, []T) (int, []T, int, bool))
		return f
	case float64:
		f, _ := any(fastFloats[float64]).(func([]byte, int, []T) (int, []T, int, bool))
		return f
	}
	return nil
}

// kinds is a constant table (never written after initialisation).
var kinds = []*kind{
	fp16Kind(),
	bytesKind(),
	newKind(FP32, ort.TensorElementDataTypeFloat, "DT_FLOAT", parseFloat[float32](32), appendFloat[float32](32)),
	newKind(FP64, ort.TensorElementDataTypeDouble, "DT_DOUBLE", parseFloat[float64](64), appendFloat[float64](64)),
	newKind(INT64, ort.TensorElementDataTypeInt64, "DT_INT64", parseInt[int64](64), appendInt[int64]),
	newKind(INT32, ort.TensorElementDataTypeInt32, "DT_INT32", parseInt[int32](32), appendInt[int32]),
	newKind(INT16, ort.TensorElementDataTypeInt16, "DT_INT16", parseInt[int16](16), appendInt[int16]),
	newKind(INT8, ort.TensorElementDataTypeInt8, "DT_INT8", parseInt[int8](8), appendInt[int8]),
	newKind(UINT64, ort.TensorElementDataTypeUint64, "DT_UINT64", parseUint[uint64](64), appendUint[uint64]),
	newKind(UINT32, ort.TensorElementDataTypeUint32, "DT_UINT32", parseUint[uint32](32), appendUint[uint32]),
	newKind(UINT16, ort.TensorElementDataTypeUint16, "DT_UINT16", parseUint[uint16](16), appendUint[uint16]),
	newKind(UINT8, ort.TensorElementDataTypeUint8, "DT_UINT8", parseUint[uint8](8), appendUint[uint8]),
	newKind(BOOL, ort.TensorElementDataTypeBool, "DT_BOOL", parseBool, strconv.AppendBool),
}

// kindOf finds the kind of a data type spotml can serve.
func kindOf(dt DataType) (*kind, bool) {
	for _, k := range kinds {
		if k.dt == dt {
			return k, true
		}
	}
	return nil, false
}

// dataTypeOf names ONNX Runtime's element types; those spotml cannot serve
// still get a name so that errors and metadata can say what they are.
func dataTypeOf(t ort.TensorElementDataType) DataType {
	for _, k := range kinds {
		if k.ort == t {
			return k.dt
		}
	}
	if t == ort.TensorElementDataTypeBFloat16 {
		return BF16
	}
	return DataType(strings.TrimPrefix(t.String(), "ONNX_TENSOR_ELEMENT_DATA_TYPE_"))
}

func parseFloat[T float32 | float64](bits int) func([]byte) (T, bool) {
	return func(tok []byte) (T, bool) {
		if tok[0] != '-' && (tok[0] < '0' || tok[0] > '9') {
			return 0, false // true, false or null
		}
		if f, ok := fastFloat(tok, bits); ok {
			return T(f), true
		}
		// The reader has checked that tok is a JSON number; out-of-range
		// values come back as ±Inf with an error, which is refused too.
		f, err := strconv.ParseFloat(string(tok), bits)
		return T(f), err == nil
	}
}

// fastFloat converts the short decimals requests are made of (0.0,
// 0.003921569, 12.5) without strconv: the digits as an integer m and a power
// of ten e, then one IEEE multiplication or division of exact operands, which
// is correctly rounded (Clinger's fast path). ok is false where that does
// not hold, and strconv does it. For float32 the operation is done in
// float64 and rounded again, which is right unless the float64 lands exactly
// halfway between two float32s (then ok is false too).
func fastFloat(tok []byte, bits int) (float64, bool) {
	i, neg := 0, false
	if tok[0] == '-' {
		neg, i = true, 1
	}
	var m uint64
	digits, exp := 0, 0
	for ; i < len(tok) && tok[i] >= '0' && tok[i] <= '9'; i++ {
		if m != 0 || tok[i] != '0' {
			digits++
		}
		m = m*10 + uint64(tok[i]-'0')
	}
	if i < len(tok) && tok[i] == '.' {
		for i++; i < len(tok) && tok[i] >= '0' && tok[i] <= '9'; i++ {
			if m != 0 || tok[i] != '0' {
				digits++
			}
			m = m*10 + uint64(tok[i]-'0')
			exp--
		}
	}
	if digits > 15 {
		return 0, false // m may have overflowed, or exceed 2^53
	}
	if i < len(tok) { // exponent
		i++
		eneg := false
		if tok[i] == '+' || tok[i] == '-' {
			eneg = tok[i] == '-'
			i++
		}
		e := 0
		for ; i < len(tok); i++ {
			if e > 1000 {
				return 0, false
			}
			e = e*10 + int(tok[i]-'0')
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	return decimal(m, exp, neg, bits)
}

// decimal is m×10^exp (negated when neg) as a float of the given bits, when
// one IEEE operation gets it exactly rounded (m < 10^15: the caller counts
// digits). See fastFloat.
func decimal(m uint64, exp int, neg bool, bits int) (float64, bool) {
	var f float64
	switch {
	case m == 0:
	case exp < -22 || exp > 22:
		return 0, false
	case exp < 0:
		f = float64(m) / pow10[-exp]
	default:
		f = float64(m) * pow10[exp]
	}
	if neg {
		f = -f
	}
	if bits == 32 {
		// A float32 halfway point has a 1 then 28 zeros below float32's
		// 24 bits of mantissa.
		if b := math.Float64bits(f); b&(1<<29-1) == 1<<28 {
			return 0, false
		}
	}
	return f, true
}

// fastFloats reads a flat JSON array of short decimals, b[i] == '[', in one
// pass that checks the JSON grammar and converts each number as it goes
// (decimal), appending to vals: most of a request's bytes are such arrays.
// ok is false for anything else (an empty or nested array, a long or huge
// number, a malformed one): the caller then reads the array the general
// way, from i, which also says what is wrong.
func fastFloats[T float32 | float64](b []byte, i int, vals []T) (end int, out []T, n int, ok bool) {
	bits := 64
	if _, is32 := any(T(0)).(float32); is32 {
		bits = 32
	}
	i = skipSpace(b, i+1)
	for i < len(b) {
		neg := false
		if b[i] == '-' {
			neg = true
			if i++; i == len(b) {
				return
			}
		}
		var m uint64
		digits, exp := 0, 0
		switch c := b[i]; {
		case c == '0':
			i++
		case c >= '1' && c <= '9':
			for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
				m = m*10 + uint64(b[i]-'0')
				digits++
			}
		default:
			return
		}
		if i < len(b) && b[i] == '.' {
			i++
			start := i
			for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
				if m != 0 || b[i] != '0' {
					digits++
				}
				m = m*10 + uint64(b[i]-'0')
				exp--
			}
			if i == start {
				return
			}
		}
		if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
			i++
			eneg := false
			if i < len(b) && (b[i] == '+' || b[i] == '-') {
				eneg = b[i] == '-'
				i++
			}
			start, e := i, 0
			for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
				if e < 1000 {
					e = e*10 + int(b[i]-'0')
				}
			}
			if i == start {
				return
			}
			if eneg {
				e = -e
			}
			exp += e
		}
		if digits > 15 {
			return
		}
		f, fine := decimal(m, exp, neg, bits)
		if !fine {
			return
		}
		vals = append(vals, T(f))
		n++
		if i = skipSpace(b, i); i == len(b) {
			return
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return i + 1, vals, n, true
		default:
			return
		}
	}
	return
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

func parseInt[T int8 | int16 | int32 | int64](bits int) func([]byte) (T, bool) {
	return func(tok []byte) (T, bool) {
		i, err := strconv.ParseInt(string(tok), 10, bits)
		return T(i), err == nil
	}
}

func parseUint[T uint8 | uint16 | uint32 | uint64](bits int) func([]byte) (T, bool) {
	return func(tok []byte) (T, bool) {
		u, err := strconv.ParseUint(string(tok), 10, bits)
		return T(u), err == nil
	}
}

func parseBool(tok []byte) (bool, bool) {
	switch string(tok) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// appendFloat writes the shortest decimal that reads back as the same
// value. JSON has no NaN or infinities: they are written as null.
func appendFloat[T float32 | float64](bits int) func([]byte, T) []byte {
	return func(buf []byte, v T) []byte {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return append(buf, "null"...)
		}
		return strconv.AppendFloat(buf, f, 'g', -1, bits)
	}
}

func appendInt[T int8 | int16 | int32 | int64](buf []byte, v T) []byte {
	return strconv.AppendInt(buf, int64(v), 10)
}

func appendUint[T uint8 | uint16 | uint32 | uint64](buf []byte, v T) []byte {
	return strconv.AppendUint(buf, uint64(v), 10)
}

// shapeString writes a shape as [-1,1,28,28], the form error messages use.
func shapeString(s []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(d, 10))
	}
	b.WriteByte(']')
	return b.String()
}

// elements is the number of elements a shape holds, or -1 when that
// overflows (or a dimension is negative).
func elements(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || (d > 0 && n > math.MaxInt64/d) {
			return -1
		}
		n *= d
	}
	return n
}
