// Package inference is spotml's builtin inference runtime: it serves one
// ONNX model in-process over HTTP, speaking both TensorFlow Serving's REST API
// and KServe's Open Inference Protocol (v2), and batches concurrent requests
// into single model runs.
//
// Models run on ONNX Runtime, a shared library loaded at run time through
// github.com/yalue/onnxruntime_go (which needs cgo). FindLibrary locates the
// library; Open loads it on first use and opens a model; NewHandler serves it.
package inference

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// LibraryEnv names the environment variable that points at the ONNX Runtime
// shared library, overriding the search.
const LibraryEnv = "SPOTML_ONNXRUNTIME_LIB"

// LibraryName is the file FindLibrary looks for.
const LibraryName = "libonnxruntime.so"

// ErrNoLibrary is returned when the ONNX Runtime shared library is not found.
var ErrNoLibrary = errors.New("ONNX Runtime shared library not found")

// FindLibrary returns the path of the ONNX Runtime shared library: the file
// named by SPOTML_ONNXRUNTIME_LIB when it is set, else the first of dirs that
// holds libonnxruntime.so. The error says where it looked and how to get the
// library.
func FindLibrary(getenv func(string) string, dirs ...string) (string, error) {
	if p := getenv(LibraryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v; point it at a libonnxruntime.so (bash scripts/fetch-onnxruntime.sh downloads one into build/onnxruntime)",
				ErrNoLibrary, LibraryEnv, p, err)
		}
		return p, nil
	}
	var looked []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, LibraryName)
		if _, err := os.Stat(p); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				p = abs // logs say where it really is
			}
			return p, nil
		}
		looked = append(looked, p)
	}
	return "", fmt.Errorf("%w (looked for %v): run `bash scripts/fetch-onnxruntime.sh` in the spotml repository (it puts %s in build/onnxruntime), or set %s to its path",
		ErrNoLibrary, looked, LibraryName, LibraryEnv)
}

// runtimeEnv is ONNX Runtime's environment, which exists once per process:
// onnxruntime_go keeps it (and the loaded library) in package variables and
// refuses a second InitializeEnvironment, without a lock. The guard around it
// therefore has to be process-wide too; it is the one piece of package-level
// mutable state here, forced by the library. The environment is never torn
// down: models come and go, the process keeps it.
var runtimeEnv struct {
	mu  sync.Mutex
	lib string // the library loaded; "" until loading succeeds
}

// loadRuntime loads the ONNX Runtime library at lib and creates the
// environment, once per process. Asking again for the same library is a
// no-op; asking for another one is an error, since a process can hold one.
// A failed load may be retried (with a library that works).
func loadRuntime(lib string) error {
	if lib == "" {
		return fmt.Errorf("%w: no library path given (use FindLibrary)", ErrNoLibrary)
	}
	// Compared by the file it names, so that build/onnxruntime/libonnxruntime.so
	// and the absolute path of its target are the same library.
	if real, err := filepath.EvalSymlinks(lib); err == nil {
		lib = real
	}
	if abs, err := filepath.Abs(lib); err == nil {
		lib = abs
	}
	runtimeEnv.mu.Lock()
	defer runtimeEnv.mu.Unlock()
	switch runtimeEnv.lib {
	case lib:
		return nil
	case "":
	default:
		return fmt.Errorf("ONNX Runtime is already loaded from %s in this process and cannot be loaded again from %s", runtimeEnv.lib, lib)
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(ort.WithLogLevelWarning()); err != nil {
		return fmt.Errorf("load ONNX Runtime from %s: %w (it must be ONNX Runtime 1.24 or newer; bash scripts/fetch-onnxruntime.sh downloads one)", lib, err)
	}
	runtimeEnv.lib = lib
	return nil
}
