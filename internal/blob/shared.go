package blob

import (
	"cmp"
	"context"
	"io"
	"net/http"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/gcerrors"
)

// sharedBucket is a driver that forwards every call to a *blob.Bucket and
// ignores Close. A mem:// bucket, and a cloud bucket with its clients and
// credentials, must outlive the *blob.Bucket values that Open hands out,
// and both Close and blob.PrefixedBucket close the driver underneath, so
// each caller gets its own *blob.Bucket over this driver.
type sharedBucket struct {
	b *blob.Bucket
}

var _ driver.Bucket = sharedBucket{}

func (s sharedBucket) ErrorCode(err error) gcerrors.ErrorCode { return gcerrors.Code(err) }
func (s sharedBucket) As(i any) bool                          { return s.b.As(i) }
func (s sharedBucket) ErrorAs(err error, i any) bool          { return s.b.ErrorAs(err, i) }
func (s sharedBucket) Close() error                           { return nil }

func (s sharedBucket) Attributes(ctx context.Context, key string) (*driver.Attributes, error) {
	a, err := s.b.Attributes(ctx, key)
	if err != nil {
		return nil, err
	}
	return &driver.Attributes{
		CacheControl:       a.CacheControl,
		ContentDisposition: a.ContentDisposition,
		ContentEncoding:    a.ContentEncoding,
		ContentLanguage:    a.ContentLanguage,
		ContentType:        a.ContentType,
		Metadata:           a.Metadata,
		CreateTime:         a.CreateTime,
		ModTime:            a.ModTime,
		Size:               a.Size,
		MD5:                a.MD5,
		ETag:               a.ETag,
		AsFunc:             a.As,
	}, nil
}

func (s sharedBucket) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	token := opts.PageToken
	if len(token) == 0 {
		token = blob.FirstPageToken
	}
	size := opts.PageSize
	if size <= 0 {
		size = 1000
	}
	objs, next, err := s.b.ListPage(ctx, token, size, &blob.ListOptions{
		Prefix:     opts.Prefix,
		Delimiter:  opts.Delimiter,
		BeforeList: opts.BeforeList,
	})
	if err != nil {
		return nil, err
	}
	page := &driver.ListPage{NextPageToken: next}
	for _, o := range objs {
		page.Objects = append(page.Objects, &driver.ListObject{
			Key:     o.Key,
			ModTime: o.ModTime,
			Size:    o.Size,
			MD5:     o.MD5,
			IsDir:   o.IsDir,
			AsFunc:  o.As,
		})
	}
	return page, nil
}

func (s sharedBucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	r, err := s.b.NewRangeReader(ctx, key, offset, length, &blob.ReaderOptions{BeforeRead: opts.BeforeRead})
	if err != nil {
		return nil, err
	}
	return sharedReader{r}, nil
}

func (s sharedBucket) NewTypedWriter(ctx context.Context, key, contentType string, opts *driver.WriterOptions) (driver.Writer, error) {
	return &sharedWriter{ctx: ctx, b: s.b, key: key, opts: &blob.WriterOptions{
		BufferSize:                  opts.BufferSize,
		MaxConcurrency:              opts.MaxConcurrency,
		CacheControl:                opts.CacheControl,
		ContentDisposition:          opts.ContentDisposition,
		ContentEncoding:             opts.ContentEncoding,
		ContentLanguage:             opts.ContentLanguage,
		ContentType:                 contentType,
		DisableContentTypeDetection: opts.DisableContentTypeDetection,
		ContentMD5:                  opts.ContentMD5,
		Metadata:                    opts.Metadata,
		BeforeWrite:                 opts.BeforeWrite,
		IfNotExist:                  opts.IfNotExist,
	}}, nil
}

// sharedWriter writes one object through the shared bucket, always with the
// bucket's Upload, which hands the driver a reader to stream from (S3's
// multipart uploader, Azure's UploadStream, GCS's resumable writer): Writes
// go into a pipe that an Upload reads. gocloud.dev's azureblob writer, fed
// by Write instead, dereferences a pipe its upload goroutine has already
// cleared when the upload fails during Close (v0.47.0), so a write whose
// commit fails would crash the process rather than return the error.
type sharedWriter struct {
	ctx  context.Context
	b    *blob.Bucket
	key  string
	opts *blob.WriterOptions

	pw   *io.PipeWriter // Writes go here, once the first one starts the upload
	done chan struct{}  // closed when that upload has returned
	err  error          // the upload's result, set before done closes

	uploaded bool // Upload was called instead
}

func (w *sharedWriter) Write(p []byte) (int, error) {
	if w.pw == nil {
		pr, pw := io.Pipe()
		w.pw, w.done = pw, make(chan struct{})
		go func() {
			defer close(w.done)
			w.err = w.b.Upload(w.ctx, w.key, pr, w.opts)
			// Later Writes fail rather than block if the upload ended
			// before reading everything.
			pr.CloseWithError(cmp.Or(w.err, io.ErrClosedPipe))
		}()
	}
	return w.pw.Write(p)
}

// Upload writes the whole object from r; blob.Bucket.Upload calls it as
// the writer's only write.
func (w *sharedWriter) Upload(r io.Reader) error {
	w.uploaded = true
	w.err = w.b.Upload(w.ctx, w.key, r, w.opts)
	return w.err
}

// Close commits the object, an empty one if nothing was written.
func (w *sharedWriter) Close() error {
	switch {
	case w.uploaded:
		return w.err
	case w.pw == nil:
		return w.b.Upload(w.ctx, w.key, http.NoBody, w.opts)
	}
	w.pw.Close()
	<-w.done
	return w.err
}

func (s sharedBucket) Copy(ctx context.Context, dstKey, srcKey string, opts *driver.CopyOptions) error {
	return s.b.Copy(ctx, dstKey, srcKey, &blob.CopyOptions{BeforeCopy: opts.BeforeCopy})
}

func (s sharedBucket) Delete(ctx context.Context, key string, opts *driver.DeleteOptions) error {
	return s.b.DeleteWithOptions(ctx, key, &blob.DeleteOptions{BeforeDelete: opts.BeforeDelete})
}

func (s sharedBucket) SignedURL(ctx context.Context, key string, opts *driver.SignedURLOptions) (string, error) {
	return s.b.SignedURL(ctx, key, &blob.SignedURLOptions{
		Expiry:                   opts.Expiry,
		Method:                   opts.Method,
		ContentType:              opts.ContentType,
		EnforceAbsentContentType: opts.EnforceAbsentContentType,
		BeforeSign:               opts.BeforeSign,
	})
}

type sharedReader struct {
	r *blob.Reader
}

func (r sharedReader) Read(p []byte) (int, error) { return r.r.Read(p) }
func (r sharedReader) Close() error               { return r.r.Close() }
func (r sharedReader) As(i any) bool              { return r.r.As(i) }

func (r sharedReader) Attributes() *driver.ReaderAttributes {
	return &driver.ReaderAttributes{ContentType: r.r.ContentType(), ModTime: r.r.ModTime(), Size: r.r.Size()}
}
