// Command etcd is etcd's own server main, built from go.etcd.io/etcd/server/v3
// through the Go module proxy for the Kubernetes test harness.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
