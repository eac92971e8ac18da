package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/client"
)

// newBlobCmd moves files in and out of the control plane's default blob
// store (models, resource files, outputs, logs, checkpoints).
// Files stream both ways: neither end holds a whole file, and only a
// transfer that stalls fails, never a slow one. On a terminal, stderr shows
// a progress bar.
func newBlobCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	c := &cobra.Command{Use: "blob", Short: "List, download and upload files in the default blob store"}
	c.AddCommand(&cobra.Command{
		Use:   "ls [PREFIX]",
		Short: "List objects under a prefix",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			objs, err := listBlobs(c, g, prefix)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SIZE\tMODIFIED\tPATH")
			for _, o := range objs {
				fmt.Fprintf(tw, "%d\t%s\t%s\n", o.Size, o.ModTime.Local().Format("2006-01-02 15:04:05"), o.Key)
			}
			return tw.Flush()
		},
	}, &cobra.Command{
		Use:   "get PATH [DEST]",
		Short: "Download an object (or, for PATH ending in /, every object under it into directory DEST)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			src := args[0]
			if strings.HasSuffix(src, "/") {
				dest := "."
				if len(args) == 2 {
					dest = args[1]
				}
				objs, err := listBlobs(c, g, src)
				if err != nil {
					return err
				}
				for _, o := range objs {
					file, err := downloadPath(dest, src, o.Key)
					if err != nil {
						return err
					}
					if err := getBlob(c.Context(), cl, o.Key, file, stderr); err != nil {
						return err
					}
					fmt.Fprintln(stdout, file)
				}
				return nil
			}
			dest := path.Base(src)
			if len(args) == 2 {
				dest = args[1]
			}
			if dest == "-" {
				body, err := cl.Download(c.Context(), blobURL(src))
				if err != nil {
					return err
				}
				defer body.Close()
				_, err = io.Copy(stdout, body)
				return err
			}
			if err := getBlob(c.Context(), cl, src, dest, stderr); err != nil {
				return err
			}
			fmt.Fprintln(stdout, dest)
			return nil
		},
	}, &cobra.Command{
		Use:   "put FILE PATH",
		Short: "Upload a local file to PATH in the default store",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			size := int64(-1) // a pipe or a device: sent chunked
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
				size = fi.Size()
			}
			bar := newTransferBar(stderr, args[1], size)
			if err := cl.Upload(c.Context(), http.MethodPut, blobURL(args[1]), bar.reader(f), size); err != nil {
				return fmt.Errorf("put %s: %w", args[1], err)
			}
			bar.finish()
			fmt.Fprintf(stdout, "%s -> %s (%d bytes)\n", args[0], args[1], bar.done)
			return nil
		},
	})
	return c
}

func blobURL(p string) string {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return api.Prefix + "/blobs/" + strings.Join(parts, "/")
}

func listBlobs(c *cobra.Command, g *globals, prefix string) ([]api.BlobObject, error) {
	cl, err := g.client()
	if err != nil {
		return nil, err
	}
	var objs []api.BlobObject
	err = cl.Do(c.Context(), http.MethodGet, api.Prefix+"/blobs?"+url.Values{"prefix": {prefix}}.Encode(), nil, &objs)
	return objs, err
}

// downloadPath is where the object key, listed by the server under the
// prefix src, goes inside directory dest. A key outside src, or one whose
// rest would leave dest (../x, /x), is refused: the server's listing is not
// trusted with the local file system.
func downloadPath(dest, src, key string) (string, error) {
	rel, ok := strings.CutPrefix(key, strings.TrimSuffix(src, "/")+"/")
	file, err := blob.LocalPath(dest, rel)
	if !ok || err != nil {
		return "", fmt.Errorf("get %s: the server listed %q, which would be written outside %s; refusing it (is the server what you think it is?)", src, key, dest)
	}
	return file, nil
}

// getBlob downloads src into the file dest as it arrives, replacing dest
// only once complete (blob.WriteFile).
func getBlob(ctx context.Context, cl *client.Client, src, dest string, progress io.Writer) error {
	body, err := cl.Download(ctx, blobURL(src))
	if err != nil {
		return fmt.Errorf("get %s: %w", src, err)
	}
	defer body.Close()
	size := body.Size
	bar := newTransferBar(progress, src, size)
	err = blob.WriteFile(dest, func(w io.Writer) error {
		if _, err := io.Copy(w, bar.reader(body)); err != nil {
			return fmt.Errorf("get %s: %w", src, err)
		}
		if size >= 0 && bar.done != size {
			return fmt.Errorf("get %s: got %d of %d bytes", src, bar.done, size)
		}
		return nil
	})
	if err != nil {
		return err
	}
	bar.finish()
	return nil
}
