package main

import (
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"path/filepath"
)

// fmnistDir is where Debian's dataset-fashion-mnist puts the set.
const fmnistDir = "/usr/share/datasets/fashion-mnist"

// image28 is one 28×28 grayscale Fashion-MNIST image, row-major.
type image28 [784]byte

// readImages reads the first n images of the set, the 60,000 training
// images first and then the 10,000 test images (70,000 in all).
func readImages(dir string, n int) ([]image28, error) {
	var out []image28
	for _, f := range []string{"train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"} {
		if len(out) >= n {
			break
		}
		imgs, err := readIDX(filepath.Join(dir, f), n-len(out))
		if err != nil {
			return nil, fmt.Errorf("%w (apt-get install dataset-fashion-mnist)", err)
		}
		out = append(out, imgs...)
	}
	return out, nil
}

// readIDX reads at most max images of an IDX3 file (gzipped).
func readIDX(path string, max int) ([]image28, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var hdr [16]byte
	if _, err := io.ReadFull(zr, hdr[:]); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	if magic := binary.BigEndian.Uint32(hdr[0:4]); magic != 2051 {
		return nil, fmt.Errorf("%s: magic %d, not an IDX3 image file", path, magic)
	}
	if rows, cols := binary.BigEndian.Uint32(hdr[8:12]), binary.BigEndian.Uint32(hdr[12:16]); rows != 28 || cols != 28 {
		return nil, fmt.Errorf("%s: images are %d×%d, want 28×28", path, rows, cols)
	}
	count := min(int(binary.BigEndian.Uint32(hdr[4:8])), max)
	out := make([]image28, count)
	for i := range out {
		if _, err := io.ReadFull(zr, out[i][:]); err != nil {
			return nil, fmt.Errorf("%s: image %d: %w", path, i, err)
		}
	}
	return out, nil
}

// imageKey is the blob key of image i: a thousand to a directory, as
// uploads usually are, rather than 70,000 in one.
func imageKey(i int) string {
	return fmt.Sprintf("%02d/%05d.png", i/1000, i)
}

// writePNGs writes each image as a PNG file under dir, at imageKey, and
// returns the keys in order.
func writePNGs(dir string, imgs []image28) ([]string, error) {
	keys := make([]string, len(imgs))
	enc := png.Encoder{CompressionLevel: png.DefaultCompression}
	for i := range imgs {
		keys[i] = imageKey(i)
		p := filepath.Join(dir, filepath.FromSlash(keys[i]))
		if i%1000 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
		}
		img := image.NewGray(image.Rect(0, 0, 28, 28))
		copy(img.Pix, imgs[i][:])
		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		err = enc.Encode(f, img)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
	}
	return keys, nil
}
