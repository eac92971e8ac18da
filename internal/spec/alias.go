package spec

import (
	"fmt"

	"go.yaml.in/yaml/v3"
)

// maxAliasNodes bounds the YAML nodes that aliases may add to one document.
// Every use of an alias copies its anchor's value, so a few kilobytes of
// aliases to aliases (or one large anchor listed thousands of times) would
// otherwise decode into millions of values. A hand-written spec that shares
// an env block or a task template by alias stays far below it.
const maxAliasNodes = 100_000

// checkAliases walks the document as written, each node once, and returns
// the first alias that refers to a value containing it or that takes the
// nodes aliases add past maxAliasNodes. It expands nothing: the size of an
// anchor's value is counted once and remembered.
func checkAliases(root *yaml.Node) *FieldError {
	c := aliasCheck{size: map[*yaml.Node]int{}, open: map[*yaml.Node]bool{}}
	return c.walk(root, "")
}

type aliasCheck struct {
	size  map[*yaml.Node]int  // nodes in a value with its aliases expanded, at most maxAliasNodes+1
	open  map[*yaml.Node]bool // the values being walked or sized: an alias to one is a cycle
	added int                 // nodes added by the aliases met so far
}

func (c *aliasCheck) walk(n *yaml.Node, path string) *FieldError {
	if n.Kind == yaml.AliasNode {
		size, ok := c.expanded(n.Alias)
		if !ok {
			return &FieldError{Line: n.Line, Field: path, Msg: fmt.Sprintf(
				"alias *%s refers to a value that contains it; an alias may only repeat a value defined before it", n.Value)}
		}
		c.added += size
		if c.added > maxAliasNodes {
			return &FieldError{Line: n.Line, Field: path, Msg: fmt.Sprintf(
				"alias *%s expands the document past %d YAML nodes (each use of an alias copies its anchor's value); use it fewer times or write the values out",
				n.Value, maxAliasNodes)}
		}
		return nil
	}
	c.open[n] = true
	defer delete(c.open, n)
	for i, child := range n.Content {
		p := path
		switch n.Kind {
		case yaml.MappingNode:
			if i%2 == 1 {
				if k := n.Content[i-1]; k.Kind == yaml.ScalarNode {
					p = keyPath(path, k.Value)
				}
			}
		case yaml.SequenceNode:
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		if err := c.walk(child, p); err != nil {
			return err
		}
	}
	return nil
}

// expanded returns the number of nodes in n with every alias in it
// expanded, capped at maxAliasNodes+1, and false if n contains an alias to
// itself.
func (c *aliasCheck) expanded(n *yaml.Node) (int, bool) {
	if n == nil {
		return 0, true
	}
	if n.Kind == yaml.AliasNode {
		return c.expanded(n.Alias)
	}
	if c.open[n] {
		return 0, false
	}
	if s, ok := c.size[n]; ok {
		return s, true
	}
	c.open[n] = true
	defer delete(c.open, n)
	total := 1
	for _, child := range n.Content {
		s, ok := c.expanded(child)
		if !ok {
			return 0, false
		}
		total = min(total+s, maxAliasNodes+1)
	}
	c.size[n] = total
	return total, true
}
