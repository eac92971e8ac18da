package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
)

// newTokenCmd manages named API tokens (admin only, through the API).
func newTokenCmd(g *globals, stdout io.Writer) *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke named API tokens (role admin or viewer)",
	}
	var role string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a named token and print it; it is stored hashed and never shown again",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			var t api.TokenCreated
			if err := cl.Do(c.Context(), http.MethodPost, api.Prefix+"/tokens", api.TokenRequest{Name: args[0], Role: role}, &t); err != nil {
				return err
			}
			fmt.Fprintln(stdout, t.Secret)
			fmt.Fprintf(c.ErrOrStderr(), "token/%s created with role %s; it is shown only this once: keep it (SPOTML_TOKEN=...)\n", t.Name, t.Role)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", api.RoleViewer, "admin (everything) or viewer (read-only API and console)")
	var output string
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the named tokens (names and roles, never the secrets)",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			var ts []api.Token
			if err := cl.Do(c.Context(), http.MethodGet, api.Prefix+"/tokens", nil, &ts); err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ts)
			}
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.Name, t.Role, t.CreatedAt.Local().Format("2006-01-02 15:04:05"))
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVarP(&output, "output", "o", "", "json (default: a table)")
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a named token; it stops working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context(), http.MethodDelete, api.Prefix+"/tokens/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "token/%s revoked\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, ls, revoke)
	return c
}
