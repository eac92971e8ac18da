package blob

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gocloud.dev/blob/driver"
)

// ListPaged lists a file bucket's objects in key order, a page at a time.
// fileblob's own ListPaged walks the whole tree under the prefix for every
// page, and for every file before the page token it opens the file's
// .attrs sidecar and stats the file, only to skip it: listing n files in
// pages of 1,000 costs about n²/2,000 of each, 7.4 s for 20,000 files and
// minutes for 70,000 under load (BenchmarkFileList). This walk goes
// straight to the page token, skipping whole directories that sort before
// it, visits entries in key order (a file "a-b" sorts before the directory
// "a/", which a plain walk visits first), and reads no sidecars: this
// store writes none, and a listing needs no MD5. A listing by delimiter
// (directories collapsed) is left to fileblob.
func (b *fileBucket) ListPaged(ctx context.Context, opts *driver.ListOptions) (*driver.ListPage, error) {
	if opts.Delimiter != "" {
		return b.sharedBucket.ListPaged(ctx, opts)
	}
	if opts.BeforeList != nil {
		if err := opts.BeforeList(func(any) bool { return false }); err != nil {
			return nil, err
		}
	}
	l := &fileLister{ctx: ctx, prefix: opts.Prefix, after: string(opts.PageToken), size: opts.PageSize, page: &driver.ListPage{}}
	if l.size <= 0 {
		l.size = 1000
	}
	// Only the directory that holds the prefix's last "/" can hold a
	// matching key.
	dir, dirKey := "/", ""
	if i := strings.LastIndex(opts.Prefix, "/"); i > 0 {
		dir, dirKey = filepath.Join("/", escapeKey(opts.Prefix[:i])), opts.Prefix[:i+1]
	}
	if err := l.walk(dir, dirKey); err != nil && !errors.Is(err, errPageFull) {
		return nil, err
	}
	return l.page, nil
}

// errPageFull ends a walk once the page is full.
var errPageFull = errors.New("page full")

type fileLister struct {
	ctx    context.Context
	prefix string
	after  string // the page token: the last key of the page before
	size   int
	page   *driver.ListPage
}

type fileEntry struct {
	key string // directories end in "/"
	e   os.DirEntry
}

// walk adds the objects under dir, whose keys start with dirKey, in key
// order.
func (l *fileLister) walk(dir, dirKey string) error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		// Gone or unreadable: nothing listed there, as fileblob does.
		return nil
	}
	kids := make([]fileEntry, 0, len(ents))
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".attrs") {
			continue // fileblob's metadata sidecar, not an object
		}
		k := dirKey + unescapeKey(name)
		if e.IsDir() {
			k += "/"
		}
		kids = append(kids, fileEntry{k, e})
	}
	slices.SortFunc(kids, func(a, b fileEntry) int { return strings.Compare(a.key, b.key) })
	for _, c := range kids {
		if c.e.IsDir() {
			// Every key below starts with c.key: skip the directory if
			// none can match the prefix, or if all sort at or before the
			// page token (c.key sorts before it and is not a prefix of it).
			if !strings.HasPrefix(c.key, l.prefix) && !strings.HasPrefix(l.prefix, c.key) {
				continue
			}
			if l.after != "" && c.key <= l.after && !strings.HasPrefix(l.after, c.key) {
				continue
			}
			if err := l.walk(filepath.Join(dir, c.e.Name()), c.key); err != nil {
				return err
			}
			continue
		}
		if !strings.HasPrefix(c.key, l.prefix) || (l.after != "" && c.key <= l.after) {
			continue
		}
		objs := l.page.Objects
		if len(objs) == l.size {
			l.page.NextPageToken = []byte(objs[len(objs)-1].Key)
			return errPageFull
		}
		fi, err := c.e.Info()
		if err != nil {
			continue // removed since the directory was read
		}
		l.page.Objects = append(objs, &driver.ListObject{
			Key:     c.key,
			ModTime: fi.ModTime(),
			Size:    fi.Size(),
			AsFunc: func(i any) bool {
				p, ok := i.(*os.FileInfo)
				if ok {
					*p = fi
				}
				return ok
			},
		})
	}
	return nil
}

// unescapeKey reverses escapeKey for one path element: each "__0x<hex>__"
// becomes the rune it names, as fileblob reads it.
func unescapeKey(s string) string {
	if !strings.Contains(s, "__0x") {
		return s
	}
	r := []rune(s)
	var sb strings.Builder
	for i := 0; i < len(r); i++ {
		if isEscapeSequence(r, i) {
			rest := string(r[i+4:])
			digits, _, _ := strings.Cut(rest, "_")
			v, _ := strconv.ParseInt(digits, 16, 32)
			sb.WriteRune(rune(v))
			i += 4 + len([]rune(digits)) + 1 // the last "_" of "__"
			continue
		}
		sb.WriteRune(r[i])
	}
	return sb.String()
}
