package inference

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// Float16 is an IEEE 754 half-precision number, held as its bits: the
// element type of FP16 tensors. JSON carries FP16 values as ordinary
// numbers, rounded to the nearest half; the binary formats carry the bits.
type Float16 uint16

// Float16From rounds f to the nearest half-precision value (ties to even),
// as ONNX Runtime and NumPy do.
func Float16From(f float32) Float16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff { // Inf or NaN
		if mant != 0 {
			return Float16(sign | 0x7e00)
		}
		return Float16(sign | 0x7c00)
	}
	e := exp - 127 + 15
	switch {
	case e >= 0x1f:
		return Float16(sign | 0x7c00) // too large: Inf
	case e <= 0: // a subnormal half, or zero
		if e < -10 {
			return Float16(sign)
		}
		mant |= 0x800000
		shift := uint(14 - e)
		half := mant >> shift
		rem, halfway := mant&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > halfway || (rem == halfway && half&1 == 1) {
			half++
		}
		return Float16(sign | uint16(half))
	}
	half := uint32(e)<<10 | mant>>13
	if rem := mant & 0x1fff; rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // a carry into the exponent is right, up to Inf
	}
	return Float16(sign | uint16(half))
}

// Float32 is h's value, exactly.
func (h Float16) Float32() float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0: // subnormal: mant × 2^-24
		f := float32(mant) / (1 << 24)
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// rawBytes is the memory of s as bytes, not copied.
func rawBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(s[0])))
}

// fp16Kind: JSON numbers rounded to halves; ONNX Runtime gets the bits
// through a custom-data tensor, as onnxruntime_go has no Go half type.
func fp16Kind() *kind {
	k := newKind(FP16, ort.TensorElementDataTypeFloat16, "DT_HALF",
		func(tok []byte) (Float16, bool) {
			f, ok := parseFloat[float32](32)(tok)
			if !ok || math.Abs(float64(f)) > 65504 {
				return 0, false // beyond FP16's range
			}
			return Float16From(f), true
		},
		func(buf []byte, h Float16) []byte { return appendFloat[float32](32)(buf, h.Float32()) })
	k.tensor = func(s ort.Shape, d any) (ort.Value, error) {
		return ort.NewCustomDataTensor(s, rawBytes(d.([]Float16)), ort.TensorElementDataTypeFloat16)
	}
	k.data = func(v ort.Value) (any, bool) {
		t, ok := v.(*ort.CustomDataTensor)
		if !ok || t.DataType() != ort.TensorElementDataTypeFloat16 {
			return nil, false
		}
		b := t.GetData()
		out := make([]Float16, len(b)/2)
		copy(rawBytes(out), b)
		return out, true
	}
	return k
}

// bytesKind is BYTES, ONNX's string tensors: in JSON a string per element
// (or TensorFlow Serving's {"b64": "..."} for bytes that are not text), in
// the binary formats a 4-byte little-endian length before each element.
func bytesKind() *kind {
	k := &kind{dt: BYTES, ort: ort.TensorElementDataTypeString, tfType: "DT_STRING"}
	k.is = func(d any) bool { _, ok := d.([][]byte); return ok }
	k.length = func(d any) int { return len(d.([][]byte)) }
	k.make = func(n int) any { return make([][]byte, n) }
	k.copyAt = func(dst any, off int, src any) { copy(dst.([][]byte)[off:], src.([][]byte)) }
	k.slice = func(d any, lo, hi int) any { return d.([][]byte)[lo:hi:hi] }
	k.tensor = func(s ort.Shape, d any) (ort.Value, error) {
		t, err := ort.NewStringTensor(s)
		if err != nil {
			return nil, err
		}
		elems := d.([][]byte)
		strs := make([]string, len(elems))
		for i, e := range elems {
			strs[i] = string(e)
		}
		if err := t.SetContents(strs); err != nil {
			t.Destroy()
			return nil, err
		}
		return t, nil
	}
	k.data = func(v ort.Value) (any, bool) {
		t, ok := v.(*ort.StringTensor)
		if !ok {
			return nil, false
		}
		strs, err := t.GetContents()
		if err != nil {
			return nil, false
		}
		out := make([][]byte, len(strs))
		for i, s := range strs {
			out[i] = []byte(s)
		}
		return out, true
	}
	k.parse = func(r *reader, hint int) ([]int64, any, error) {
		shape, vals, err := parseElems(r, hint, readBytesElement)
		return shape, vals, err
	}
	k.appendJSON = func(buf []byte, d any, lo, hi int) []byte {
		for i, e := range d.([][]byte)[lo:hi] {
			if i > 0 {
				buf = append(buf, ',')
			}
			if utf8.Valid(e) {
				buf = appendString(buf, string(e))
				continue
			}
			buf = append(buf, `{"b64":"`...)
			buf = base64.StdEncoding.AppendEncode(buf, e)
			buf = append(buf, `"}`...)
		}
		return buf
	}
	k.fromRaw = func(b []byte, n int) (any, error) {
		out := make([][]byte, 0, min(n, len(b)/4))
		for i := 0; i < n; i++ {
			if len(b) < 4 {
				return nil, fmt.Errorf("BYTES element %d: the data ends before its 4-byte length", i)
			}
			l := binary.LittleEndian.Uint32(b)
			if uint64(l) > uint64(len(b)-4) {
				return nil, fmt.Errorf("BYTES element %d: length %d, but only %d bytes are left", i, l, len(b)-4)
			}
			out = append(out, append([]byte(nil), b[4:4+l]...))
			b = b[4+l:]
		}
		if len(b) != 0 {
			return nil, fmt.Errorf("%d bytes left over after %d BYTES elements", len(b), n)
		}
		return out, nil
	}
	k.view = func([]byte, int) (any, bool) { return nil, false }
	k.appendRaw = func(buf []byte, d any, lo, hi int) []byte {
		for _, e := range d.([][]byte)[lo:hi] {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(len(e)))
			buf = append(buf, e...)
		}
		return buf
	}
	return k
}

// readBytesElement reads one BYTES element: a string (its UTF-8 bytes) or
// {"b64": "..."} (TensorFlow Serving's form for binary data).
func readBytesElement(r *reader) ([]byte, error) {
	switch r.peek() {
	case '"':
		s, err := r.string()
		return []byte(s), err
	case '{':
		var out []byte
		seen := false
		err := r.object(func(key string) error {
			if key != "b64" {
				return invalidf(`an object in BYTES data must be {"b64": "base64 text"}, not have %q`, key)
			}
			s, err := r.string()
			if err != nil {
				return err
			}
			out, err = base64.StdEncoding.DecodeString(s)
			if err != nil {
				return invalidf(`"b64" is not standard base64 (RFC 4648 with padding): %v`, err)
			}
			seen = true
			return nil
		})
		if err == nil && !seen {
			err = invalidf(`an object in BYTES data must be {"b64": "base64 text"}`)
		}
		return out, err
	}
	if _, err := r.value(); err != nil {
		return nil, err
	}
	return nil, invalidf(`BYTES elements are strings or {"b64": "..."} objects`)
}
