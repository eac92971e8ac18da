// Package console is the control plane's web console: a single-page app whose
// files are embedded in the binary, so `go build` alone ships a working
// console and a browser needs nothing but the control plane to load it.
//
// The app talks to the same /api/v1 the CLI uses, with the same bearer token;
// this package serves only its static files, which hold no secrets, so they
// need no token.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed assets
var assets embed.FS

// csp forbids every origin but the control plane's own and all inline script
// and style: the console needs nothing from the internet, and a hostile
// string shown in a page (a job name, a log line) cannot run.
const csp = "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " +
	"style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; " +
	"frame-ancestors 'none'; form-action 'self'"

// Handler serves the console: index.html at "/" (and "/index.html"), the other
// files under "/assets/". Anything else is 404, so it can be mounted at "/"
// beside the API without hiding the API's own 404s.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	files := http.StripPrefix("/assets/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// Revalidate every time: an upgraded binary's console must replace a
		// cached one. FileServer's Last-Modified is zero for embedded files,
		// so it adds none and the browser refetches; the files are small.
		h.Set("Cache-Control", "no-cache")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		switch p := r.URL.Path; {
		case p == "/" || p == "/index.html":
			h.Set("Content-Type", "text/html; charset=utf-8")
			if r.Method == http.MethodGet {
				_, _ = w.Write(index)
			}
		case strings.HasPrefix(p, "/assets/") && !strings.HasSuffix(p, "/"):
			files.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}
