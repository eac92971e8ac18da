// Package kube holds the Kubernetes provider's benchmarks against a real
// kube-apiserver (internal/kubetest): reaction time from a platform signal
// to spotml's notice and replacement, and the provider's informers at
// 1,000 nodes and 10,000 pods. Figures are in bench/RESULTS.md.
package kube
