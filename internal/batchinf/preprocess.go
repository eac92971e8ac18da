package batchinf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	_ "image/gif"  // decoders image.Decode picks by content
	_ "image/jpeg" //
	_ "image/png"  //

	"github.com/spotml/spotml/internal/spec"
)

// Preprocessor turns one input blob into one row of model input values.
type Preprocessor struct {
	image *spec.ImagePreprocess
	scale float64
}

// NewPreprocessor returns the preprocessing a spec asks for: an image's
// pixels, or without preprocess.image a JSON array of numbers (nested
// arrays are flattened in row-major order).
func NewPreprocessor(p spec.Preprocess) (*Preprocessor, error) {
	pp := &Preprocessor{image: p.Image, scale: 1}
	if p.Image != nil {
		s, err := spec.ParseScale(p.Image.Scale)
		if err != nil {
			return nil, fmt.Errorf("spec.preprocess.image.scale: %w", err)
		}
		pp.scale = s
	}
	return pp, nil
}

// Row decodes data into one row of float32 values.
func (p *Preprocessor) Row(data []byte) ([]float32, error) {
	if p.image == nil {
		return jsonRow(data)
	}
	img, format, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode image: %v", err)
	}
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if sz := p.image.Size; len(sz) == 2 {
		w, h = sz[0], sz[1]
	}
	if w == 0 || h == 0 {
		return nil, fmt.Errorf("decode image: %s image is empty", format)
	}
	// Nearest neighbour: the common case (an image already of the model's
	// size) maps each pixel to itself.
	at := func(x, y int) color.Color {
		return img.At(b.Min.X+x*b.Dx()/w, b.Min.Y+y*b.Dy()/h)
	}
	scale := float32(p.scale)
	if p.image.Grayscale {
		row := make([]float32, w*h)
		if g, ok := img.(*image.Gray); ok && b.Dx() == w && b.Dy() == h {
			for y := range h {
				line := g.Pix[y*g.Stride : y*g.Stride+w]
				for x, v := range line {
					row[y*w+x] = float32(v) * scale
				}
			}
			return row, nil
		}
		for y := range h {
			for x := range w {
				g := color.GrayModel.Convert(at(x, y)).(color.Gray)
				row[y*w+x] = float32(g.Y) * scale
			}
		}
		return row, nil
	}
	// RGB, channel-major (3 × h × w), as image models take it.
	row := make([]float32, 3*w*h)
	for y := range h {
		for x := range w {
			r, g, bl, _ := at(x, y).RGBA()
			i := y*w + x
			row[i] = float32(r>>8) * scale
			row[w*h+i] = float32(g>>8) * scale
			row[2*w*h+i] = float32(bl>>8) * scale
		}
	}
	return row, nil
}

func jsonRow(data []byte) ([]float32, error) {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("decode JSON: %v (without spec.preprocess.image an input is a JSON array of numbers)", err)
	}
	var row []float32
	var walk func(v any) error
	walk = func(v any) error {
		switch t := v.(type) {
		case float64:
			row = append(row, float32(t))
		case []any:
			for _, e := range t {
				if err := walk(e); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("decode JSON: want an array of numbers, found %T", v)
		}
		return nil
	}
	if err := walk(v); err != nil {
		return nil, err
	}
	return row, nil
}
