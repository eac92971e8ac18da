package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/client"
)

// newBlobCmd moves files in and out of the control plane's default blob
// store (models, resource files, outputs, logs, checkpoints).
func newBlobCmd(g *globals, stdout io.Writer) *cobra.Command {
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
					rel := strings.TrimPrefix(o.Key, strings.TrimSuffix(src, "/")+"/")
					if err := getBlob(c, cl, o.Key, filepath.Join(dest, filepath.FromSlash(rel))); err != nil {
						return err
					}
					fmt.Fprintln(stdout, filepath.Join(dest, filepath.FromSlash(rel)))
				}
				return nil
			}
			dest := path.Base(src)
			if len(args) == 2 {
				dest = args[1]
			}
			if dest == "-" {
				var b []byte
				if err := cl.Do(c.Context(), http.MethodGet, blobURL(src), nil, &b); err != nil {
					return err
				}
				_, err := stdout.Write(b)
				return err
			}
			if err := getBlob(c, cl, src, dest); err != nil {
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
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), http.MethodPut, blobURL(args[1]), b, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s -> %s (%d bytes)\n", args[0], args[1], len(b))
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

func listBlobs(c *cobra.Command, g *globals, prefix string) ([]blob.Object, error) {
	cl, err := g.client()
	if err != nil {
		return nil, err
	}
	var objs []blob.Object
	err = cl.Do(c.Context(), http.MethodGet, api.Prefix+"/blobs?"+url.Values{"prefix": {prefix}}.Encode(), nil, &objs)
	return objs, err
}

func getBlob(c *cobra.Command, cl *client.Client, src, dest string) error {
	var b []byte
	if err := cl.Do(c.Context(), http.MethodGet, blobURL(src), nil, &b); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dest, b, 0o644)
}
