package blob

import (
	"os"
	"testing"

	"github.com/spotml/spotml/internal/blob/blobtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	blobtest.StopAzurite()
	os.Exit(code)
}
