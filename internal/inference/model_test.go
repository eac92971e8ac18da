package inference

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFindLibrary(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, LibraryName)
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	if got, err := FindLibrary(env(nil), "", t.TempDir(), dir); err != nil || got != lib {
		t.Errorf("search: %q, %v; want %q", got, err, lib)
	}
	other := filepath.Join(t.TempDir(), "libonnxruntime.so.1.24.3")
	os.WriteFile(other, nil, 0o644)
	if got, err := FindLibrary(env(map[string]string{LibraryEnv: other}), dir); err != nil || got != other {
		t.Errorf("%s wins: %q, %v; want %q", LibraryEnv, got, err, other)
	}

	_, err := FindLibrary(env(nil), t.TempDir())
	if !errors.Is(err, ErrNoLibrary) || !strings.Contains(err.Error(), "bash scripts/fetch-onnxruntime.sh") || !strings.Contains(err.Error(), LibraryEnv) {
		t.Errorf("missing library: %v; want ErrNoLibrary saying how to get it", err)
	}
	_, err = FindLibrary(env(map[string]string{LibraryEnv: "/nonexistent/libonnxruntime.so"}), dir)
	if !errors.Is(err, ErrNoLibrary) || !strings.Contains(err.Error(), "/nonexistent/libonnxruntime.so") {
		t.Errorf("%s pointing nowhere: %v; want ErrNoLibrary naming the path (no fallback to the search)", LibraryEnv, err)
	}
}

func TestOpenDescribesModel(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	if want := []TensorInfo{{Name: modelInput, DataType: FP32, Shape: []int64{-1, 1, 28, 28}}}; !reflect.DeepEqual(m.Inputs(), want) {
		t.Errorf("inputs %+v, want %+v", m.Inputs(), want)
	}
	if want := []TensorInfo{{Name: modelOutput, DataType: FP32, Shape: []int64{-1, 10}}}; !reflect.DeepEqual(m.Outputs(), want) {
		t.Errorf("outputs %+v, want %+v", m.Outputs(), want)
	}
	if !m.batches || !m.Ready() {
		t.Errorf("batches=%v ready=%v, want both", m.batches, m.Ready())
	}
}

func TestOpenErrors(t *testing.T) {
	lib := testLibrary(t)
	if _, err := Open(filepath.Join(t.TempDir(), "missing.onnx"), Options{Library: lib}); err == nil || !strings.Contains(err.Error(), "missing.onnx") {
		t.Errorf("missing model: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.onnx")
	os.WriteFile(junk, []byte("not a model"), 0o644)
	if _, err := Open(junk, Options{Library: lib}); err == nil || !strings.Contains(err.Error(), "junk.onnx") {
		t.Errorf("junk model: %v", err)
	}
	if _, err := Open(testModelPath(t), Options{}); !errors.Is(err, ErrNoLibrary) {
		t.Errorf("no library: %v, want ErrNoLibrary", err)
	}
	if err := loadRuntime(filepath.Join(t.TempDir(), LibraryName)); err == nil || !strings.Contains(err.Error(), "already loaded") {
		t.Errorf("second library: %v, want an error saying one is already loaded", err)
	}
}

// TestPredictMatchesSingleRuns: rows batched with others come back with the
// answers they get alone, and the model classifies the test set.
func TestPredictMatchesSingleRuns(t *testing.T) {
	m := openTestModel(t, Options{MaxBatch: 16, MaxQueueDelay: 5 * time.Millisecond})
	ds := loadTestSet(t)
	const n = 512
	want := make([][]float32, n)
	for i := range n {
		out, err := m.run([]Tensor{imageBatch(ds.images[i])}, 1)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out[0].Data.([]float32)
	}
	// 8 callers with requests of 1 to 4 rows.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Go(func() {
			for i := w * n / 8; i < (w+1)*n/8; {
				rows := min(1+i%4, (w+1)*n/8-i)
				out, err := m.Predict(context.Background(), []Tensor{imageBatch(ds.images[i : i+rows]...)})
				if err != nil {
					errs <- err
					return
				}
				if got := out[0].Shape; !reflect.DeepEqual(got, []int64{int64(rows), 10}) {
					errs <- errors.New("wrong output shape " + shapeString(got))
					return
				}
				logits := out[0].Data.([]float32)
				for r := range rows {
					if !closeTo(logits[r*10:(r+1)*10], want[i+r]) {
						t.Errorf("image %d: batched %v, alone %v", i+r, logits[r*10:(r+1)*10], want[i+r])
					}
				}
				i += rows
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	right := 0
	for i, l := range want {
		if argmax(l) == ds.labels[i] {
			right++
		}
	}
	if acc := float64(right) / n; acc < 0.85 {
		t.Errorf("accuracy %.3f on %d test images, want >= 0.85", acc, n)
	}
	st := m.Stats()
	if st.Requests == 0 || st.Runs >= st.Requests || st.MaxRows > 16 {
		t.Errorf("stats %+v: want fewer runs than requests, none over 16 rows", st)
	}
}

// closeTo compares logits: batched runs may sum in another order.
func closeTo(a, b []float32) bool {
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-4*(1+math.Abs(float64(b[i]))) {
			return false
		}
	}
	return len(a) == len(b)
}

// TestBatchingUnderLoad: 64 concurrent callers of one row each are served
// in batches of up to MaxBatch rows.
func TestBatchingUnderLoad(t *testing.T) {
	m := openTestModel(t, Options{MaxBatch: 32, MaxQueueDelay: 20 * time.Millisecond})
	ds := loadTestSet(t)
	const callers, each = 64, 20
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				if _, err := m.Predict(context.Background(), []Tensor{imageBatch(ds.images[c*each+i])}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := m.Stats()
	t.Logf("%+v: %.1f rows per run", st, float64(st.Rows)/float64(st.Runs))
	if st.Requests != callers*each || st.Rows != callers*each {
		t.Errorf("stats %+v: want %d requests and rows", st, callers*each)
	}
	if st.MaxRows > 32 || st.Runs > callers*each/4 {
		t.Errorf("stats %+v: want runs of at most 32 rows, at least 4 rows per run on average", st)
	}
}

func TestRequestLargerThanMaxBatchRunsAlone(t *testing.T) {
	m := openTestModel(t, Options{MaxBatch: 4, MaxQueueDelay: time.Hour})
	ds := loadTestSet(t)
	out, err := m.Predict(context.Background(), []Tensor{imageBatch(ds.images[:10]...)})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out[0].Shape, []int64{10, 10}) {
		t.Errorf("output shape %v, want [10,10]", out[0].Shape)
	}
	if st := m.Stats(); st.Runs != 1 || st.MaxRows != 10 {
		t.Errorf("stats %+v, want one run of 10 rows", st)
	}
}

func TestPredictValidation(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	img := make([]float32, 784)
	for _, tc := range []struct {
		name   string
		inputs []Tensor
		err    string
	}{
		{"wrong shape", []Tensor{{Name: "input", Shape: []int64{1, 784}, Data: img}}, `input "input": shape [1,784] does not match the model's [-1,1,28,28]`},
		{"wrong rank", []Tensor{{Name: "input", Shape: []int64{1, 28, 28}, Data: img}}, `shape [1,28,28] does not match the model's [-1,1,28,28]`},
		{"wrong type", []Tensor{{Name: "input", Shape: []int64{1, 1, 28, 28}, Data: make([]float64, 784)}}, `input "input": datatype FP64 does not match the model's FP32`},
		{"unsupported type", []Tensor{{Name: "input", Shape: []int64{1, 1, 28, 28}, Data: make([]string, 784)}}, `data of Go type []string is not a supported tensor type`},
		{"empty", []Tensor{{Name: "input", Shape: []int64{0, 1, 28, 28}, Data: []float32{}}}, `input "input": shape [0,1,28,28] is empty`},
		{"too few values", []Tensor{{Name: "input", Shape: []int64{2, 1, 28, 28}, Data: img}}, `input "input": 784 values for shape [2,1,28,28], which holds 1568`},
		{"wrong name", []Tensor{{Name: "image", Shape: []int64{1, 1, 28, 28}, Data: img}}, `the model has no input "image" (its inputs: "input")`},
		{"missing", nil, `input "input" is missing`},
		{"twice", []Tensor{imageBatch(img), imageBatch(img)}, `input "input" is given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Predict(context.Background(), tc.inputs)
			if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %v, want ErrInvalidInput containing %q", err, tc.err)
			}
		})
	}
	if st := m.Stats(); st.Runs != 0 {
		t.Errorf("invalid requests ran: %+v", st)
	}
}

func TestClosedModel(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Predict(context.Background(), []Tensor{imageBatch(make([]float32, 784))}); !errors.Is(err, ErrClosed) {
		t.Errorf("predict after close: %v, want ErrClosed", err)
	}
	if m.Ready() {
		t.Error("closed model is ready")
	}
}

// TestPredictCancelled: a caller that has gone does not get its rows run
// (the HTTP handler passes the request's context, which ends when the
// client goes away).
func TestPredictCancelled(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Predict(ctx, []Tensor{imageBatch(make([]float32, 784))}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled predict: %v", err)
	}
	if _, err := m.Predict(context.Background(), []Tensor{imageBatch(make([]float32, 784))}); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Rows != 1 {
		t.Errorf("stats %+v: want only the live request's row run", st)
	}
}
