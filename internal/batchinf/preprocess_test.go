package batchinf

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
)

func encodePNG(t *testing.T, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestPreprocessImage(t *testing.T) {
	gray := image.NewGray(image.Rect(0, 0, 4, 2))
	for i := range gray.Pix {
		gray.Pix[i] = uint8(i * 30)
	}
	rgb := image.NewRGBA(image.Rect(0, 0, 4, 2))
	for y := range 2 {
		for x := range 4 {
			rgb.Set(x, y, color.RGBA{R: uint8(x * 60), G: 10, B: 200, A: 255})
		}
	}
	for _, tc := range []struct {
		name string
		im   spec.ImagePreprocess
		img  image.Image
		want []float32
	}{
		{"gray as is, scaled", spec.ImagePreprocess{Grayscale: true, Scale: "1/30"}, gray, []float32{0, 1, 2, 3, 4, 5, 6, 7}},
		{"gray halved", spec.ImagePreprocess{Grayscale: true, Size: []int{2, 1}}, gray, []float32{0, 60}},
		{"rgb channel-major", spec.ImagePreprocess{Size: []int{2, 1}}, rgb, []float32{0, 120, 10, 10, 200, 200}},
	} {
		p, err := NewPreprocessor(spec.Preprocess{Image: &tc.im})
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Row(encodePNG(t, tc.img))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, got, tc.want)
		}
		for i := range got {
			if d := got[i] - tc.want[i]; d > 1e-5 || d < -1e-5 {
				t.Fatalf("%s: %v, want %v", tc.name, got, tc.want)
			}
		}
	}
	p, _ := NewPreprocessor(spec.Preprocess{Image: &spec.ImagePreprocess{Grayscale: true}})
	if _, err := p.Row([]byte("not a png")); err == nil || !strings.Contains(err.Error(), "decode image") {
		t.Fatalf("undecodable: %v", err)
	}
}

func TestPreprocessJSON(t *testing.T) {
	p, _ := NewPreprocessor(spec.Preprocess{})
	got, err := p.Row([]byte(`[[1, 2], [3, 4.5]]`))
	if err != nil || len(got) != 4 || got[3] != 4.5 {
		t.Fatalf("row = %v, %v", got, err)
	}
	if _, err := p.Row([]byte(`{"a": 1}`)); err == nil {
		t.Fatal("an object was taken as a row")
	}
}

func TestResultIsStable(t *testing.T) {
	outs := []inference.Tensor{{Name: "logits", Shape: []int64{2, 3}, Data: []float32{0.1, 0.7, 0.2, 3, 1, 2}}}
	r, err := RowResult("a/b.png", outs, 1)
	if err != nil || *r.Class != 0 || r.Outputs["logits"][0] != 3 {
		t.Fatalf("row 1 = %+v, %v", r, err)
	}
	r0, _ := RowResult("a/b.png", outs, 0)
	a, _ := r0.Encode(spec.FormatJSONL)
	b, _ := r0.Encode(spec.FormatJSONL)
	if !bytes.Equal(a, b) || string(a) != `{"input":"a/b.png","class":1,"outputs":{"logits":[0.1,0.7,0.2]}}`+"\n" {
		t.Fatalf("encoded %s", a)
	}
	if ResultKey("a/b.png", spec.FormatJSON) != "a/b.png.json" || ResultKey("a/b.png", spec.FormatJSONL) != "a/b.png.jsonl" {
		t.Fatal("result keys")
	}
}
