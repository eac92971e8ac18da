package inference

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The tests run the real ONNX Runtime on the Fashion-MNIST example model.
// Without the library (bash scripts/fetch-onnxruntime.sh) or the model
// (bash examples/fashion-mnist/make-model.sh) they skip, unless
// SPOTML_REQUIRE_ORT=1 (CI) turns the skip into a failure.

const (
	repoRoot    = "../.."
	datasetDir  = "/usr/share/datasets/fashion-mnist"
	modelInput  = "input"
	modelOutput = "logits"
)

func requireORT(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("SPOTML_REQUIRE_ORT") == "1" {
		t.Fatalf("%s (SPOTML_REQUIRE_ORT=1)", msg)
	}
	t.Skip(msg)
}

// testLibrary finds ONNX Runtime the way `spotml serve` run from the
// repository does.
func testLibrary(t testing.TB) string {
	t.Helper()
	lib, err := FindLibrary(os.Getenv, filepath.Join(repoRoot, "build", "onnxruntime"))
	if err != nil {
		requireORT(t, "skipping: %v", err)
	}
	return lib
}

func testModelPath(t testing.TB) string {
	t.Helper()
	p := filepath.Join(repoRoot, "examples", "fashion-mnist", "model.onnx")
	if _, err := os.Stat(p); err != nil {
		requireORT(t, "skipping: no model to serve (%v): run bash examples/fashion-mnist/make-model.sh", err)
	}
	return p
}

// openTestModel opens the example model with opts (Library filled in),
// closed when the test ends.
func openTestModel(t testing.TB, opts Options) *Model {
	t.Helper()
	opts.Library = testLibrary(t)
	m, err := Open(testModelPath(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// dataset is the Fashion-MNIST test set: images as 0..1 floats, 784 each.
type dataset struct {
	images [][]float32
	labels []int
}

func loadTestSet(t testing.TB) dataset {
	t.Helper()
	images, dims, err := readIDX(filepath.Join(datasetDir, "t10k-images-idx3-ubyte.gz"))
	if err != nil {
		requireORT(t, "skipping: Fashion-MNIST test set (apt-get install dataset-fashion-mnist): %v", err)
	}
	labels, _, err := readIDX(filepath.Join(datasetDir, "t10k-labels-idx1-ubyte.gz"))
	if err != nil {
		requireORT(t, "skipping: Fashion-MNIST test set: %v", err)
	}
	n := dims[0]
	if len(dims) != 3 || dims[1]*dims[2] != 784 || len(labels) != n {
		t.Fatalf("unexpected Fashion-MNIST shapes: images %v, %d labels", dims, len(labels))
	}
	var ds dataset
	for i := range n {
		img := make([]float32, 784)
		for j, b := range images[i*784 : (i+1)*784] {
			img[j] = float32(b) / 255
		}
		ds.images = append(ds.images, img)
		ds.labels = append(ds.labels, int(labels[i]))
	}
	return ds
}

// readIDX reads an unsigned-byte IDX file (the MNIST format), gzipped or not.
func readIDX(path string) ([]byte, []int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, nil, err
		}
		if b, err = io.ReadAll(zr); err != nil {
			return nil, nil, err
		}
	}
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0x08 {
		return nil, nil, fmt.Errorf("%s: not an unsigned-byte IDX file", path)
	}
	ndim := int(b[3])
	if len(b) < 4+4*ndim {
		return nil, nil, fmt.Errorf("%s: truncated header", path)
	}
	dims := make([]int, ndim)
	n := 1
	for i := range dims {
		dims[i] = int(binary.BigEndian.Uint32(b[4+4*i:]))
		n *= dims[i]
	}
	data := b[4+4*ndim:]
	if len(data) != n {
		return nil, nil, fmt.Errorf("%s: %d bytes of data for shape %v", path, len(data), dims)
	}
	return data, dims, nil
}

// imageBatch stacks images into one [n,1,28,28] input.
func imageBatch(images ...[]float32) Tensor {
	data := make([]float32, 0, 784*len(images))
	for _, img := range images {
		data = append(data, img...)
	}
	return Tensor{Name: modelInput, Shape: []int64{int64(len(images)), 1, 28, 28}, Data: data}
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
