package blob

import (
	"context"
	"fmt"

	"gocloud.dev/blob"
)

// Reader is an object being read: its Size, and its bytes as they are
// read. Close it.
type Reader struct {
	*blob.Reader
	bucket *blob.Bucket
}

// Close closes the object and its bucket.
func (r *Reader) Close() error {
	err := r.Reader.Close()
	if cerr := r.bucket.Close(); err == nil {
		err = cerr
	}
	return err
}

// NewReader opens the object at location, so that its length is known
// before its bytes are streamed (the blob API's Content-Length).
func (s *Store) NewReader(ctx context.Context, location string) (*Reader, error) {
	r, err := s.newReader(ctx, location)
	return r, s.explain(location, err)
}

func (s *Store) newReader(ctx context.Context, location string) (*Reader, error) {
	ref, err := s.objectRef(location)
	if err != nil {
		return nil, err
	}
	b, err := s.root(ctx, ref)
	if err != nil {
		return nil, err
	}
	rd, err := b.NewReader(ctx, ref.key, nil)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("read %s: %w", location, err)
	}
	return &Reader{Reader: rd, bucket: b}, nil
}
