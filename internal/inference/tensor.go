package inference

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// DataType names a tensor's element type the way the Open Inference Protocol
// (KServe v2) does: FP32, INT64, BOOL, ...
type DataType string

// The element types a model's inputs and outputs may have. FP16, BF16 and
// BYTES models can be described but not served.
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
	// for BOOL, and so on.
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
}

type element interface {
	~bool | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~int8 | ~int16 | ~int32 | ~int64 | ~float32 | ~float64
}

func newKind[T element](dt DataType, ortType ort.TensorElementDataType, tfType string,
	leaf func(tok []byte) (T, bool), appendLeaf func([]byte, T) []byte) *kind {
	return &kind{
		dt: dt, ort: ortType, tfType: tfType,
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
			shape, vals, err := parseArray(r, hint, func(tok []byte) (T, error) {
				v, ok := leaf(tok)
				if !ok {
					return v, fmt.Errorf("%s is not a valid %s value", tok, dt)
				}
				return v, nil
			})
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

// kinds is a constant table (never written after initialisation).
var kinds = []*kind{
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
	switch t {
	case ort.TensorElementDataTypeFloat16:
		return FP16
	case ort.TensorElementDataTypeBFloat16:
		return BF16
	case ort.TensorElementDataTypeString:
		return BYTES
	}
	return DataType(strings.TrimPrefix(t.String(), "ONNX_TENSOR_ELEMENT_DATA_TYPE_"))
}

func parseFloat[T float32 | float64](bits int) func([]byte) (T, bool) {
	return func(tok []byte) (T, bool) {
		if tok[0] != '-' && (tok[0] < '0' || tok[0] > '9') {
			return 0, false // true, false or null
		}
		// The reader has checked that tok is a JSON number; out-of-range
		// values come back as ±Inf with an error, which is refused too.
		f, err := strconv.ParseFloat(string(tok), bits)
		return T(f), err == nil
	}
}

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
