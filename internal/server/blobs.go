package server

import (
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/store"
)

// maxBlobUpload bounds one PUT to the blob API.
const maxBlobUpload = 2 << 30

// blobPath checks that a path names something inside the default blob
// store: the API never reaches other stores or the server's file system.
func blobPath(p string, dir bool) (string, error) {
	if strings.Contains(p, "://") || strings.HasPrefix(p, "/") {
		return "", badRequest{fmt.Errorf("blob path %q: give a path inside the default store, like outputs/job/model.onnx", p)}
	}
	clean := path.Clean(p)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", badRequest{fmt.Errorf("blob path %q leaves the store", p)}
	}
	if clean == "." {
		clean = ""
	}
	if dir && clean != "" {
		clean += "/"
	}
	return clean, nil
}

func (s *Server) listBlobs(w http.ResponseWriter, r *http.Request) error {
	prefix, err := blobPath(r.URL.Query().Get("prefix"), true)
	if err != nil {
		return err
	}
	objs, err := s.cfg.Blobs.List(r.Context(), prefix)
	if err != nil {
		return err
	}
	out := convert(objs, toBlobObject)
	for i := range out {
		out[i].Key = prefix + out[i].Key
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getBlob(w http.ResponseWriter, r *http.Request) error {
	p, err := blobPath(r.PathValue("path"), false)
	if err != nil {
		return err
	}
	rd, err := s.cfg.Blobs.NewReader(r.Context(), p)
	if blob.IsNotExist(err) {
		return fmt.Errorf("blob %s: %w", p, store.ErrNotFound)
	} else if err != nil {
		return err
	}
	defer rd.Close()
	// Streamed, with its length first so that a client can show progress
	// and tell a cut-off download from a complete one.
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(rd.Size(), 10))
	io.Copy(w, rd)
	return nil
}

func (s *Server) putBlob(w http.ResponseWriter, r *http.Request) error {
	p, err := blobPath(r.PathValue("path"), false)
	if err != nil {
		return err
	}
	if err := s.cfg.Blobs.Write(r.Context(), p, http.MaxBytesReader(w, r.Body, maxBlobUpload)); err != nil {
		return badRequest{err}
	}
	writeJSON(w, http.StatusCreated, api.BlobWritten{Path: p})
	return nil
}
