package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
)

// kubeFlags register the kubernetes provider in spotml server and up.
type kubeFlags struct {
	enabled     bool
	kubeconfig  string
	context     string
	agentURL    string
	spotmlImage string
	spotmlPath  string
	pullPolicy  string
	agentEnv    []string // NAME=VALUE
	envSecrets  []string // Secret names, every key an environment variable
}

func (f *kubeFlags) bind(c *cobra.Command) {
	c.Flags().BoolVar(&f.enabled, "kubernetes", false, "run pools of provider kubernetes on a cluster (kubeconfig or in-cluster config)")
	c.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, ~/.kube/config, or the in-cluster config)")
	c.Flags().StringVar(&f.context, "kube-context", "", "kubeconfig context (default the current one)")
	c.Flags().StringVar(&f.agentURL, "kube-agent-server-url", "", "the control plane's URL as agents in pods reach it (e.g. http://spotml.spotml.svc:8080)")
	c.Flags().StringVar(&f.spotmlImage, "kube-spotml-image", "", "image holding the spotml binary, copied into each agent pod by an init container")
	c.Flags().StringVar(&f.spotmlPath, "kube-spotml-path", "/usr/local/bin/spotml", "path of the spotml binary in --kube-spotml-image")
	c.Flags().StringArrayVar(&f.agentEnv, "kube-agent-env", nil, "NAME=VALUE added to every agent pod's environment (repeatable), e.g. a blob store's region or endpoint")
	c.Flags().StringArrayVar(&f.envSecrets, "kube-agent-env-secret", nil, "a Secret in the pool's namespace whose keys become agent pods' environment variables (repeatable), e.g. blob store credentials where the cluster has no workload identity")
	c.Flags().StringVar(&f.pullPolicy, "kube-image-pull-policy", string(corev1.PullIfNotPresent), "imagePullPolicy of agent pods: Always, IfNotPresent or Never")
}

// provider builds the kubernetes provider the flags describe.
func (f *kubeFlags) provider(agentArgs []string, log *slog.Logger) (*kubeprov.Provider, error) {
	switch {
	case f.agentURL == "":
		return nil, errors.New("--kube-agent-server-url: required with --kubernetes: the control plane's address as pods in the cluster reach it")
	case f.spotmlImage == "":
		return nil, errors.New("--kube-spotml-image: required with --kubernetes: an image holding the spotml binary")
	}
	pull := corev1.PullPolicy(f.pullPolicy)
	switch pull {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return nil, fmt.Errorf("--kube-image-pull-policy: %q is not Always, IfNotPresent or Never", f.pullPolicy)
	}
	var env []corev1.EnvVar
	for _, kv := range f.agentEnv {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !envName.MatchString(k) {
			return nil, fmt.Errorf("--kube-agent-env %q: want NAME=VALUE with NAME letters, digits and _ (not starting with a digit)", kv)
		}
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	var envFrom []corev1.EnvFromSource
	for _, name := range f.envSecrets {
		if name == "" {
			return nil, errors.New("--kube-agent-env-secret: empty: name a Secret in the pool's namespace")
		}
		envFrom = append(envFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: name}}})
	}
	rc, err := kubeprov.RESTConfig(f.kubeconfig, f.context)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "spotml"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return kubeprov.New(cs, kubeprov.Config{
		ServerURL: strings.TrimSuffix(f.agentURL, "/"), SpotmlImage: f.spotmlImage, SpotmlPath: f.spotmlPath,
		PullPolicy: pull, AgentArgs: agentArgs, AgentEnv: env, AgentEnvFrom: envFrom,
	}, log, time.Now), nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// newAgentInitCmd is the init container of an agent pod: it copies this
// binary and the node's credential into the pod's shared emptyDir, so that
// the pool's image can run the agent and the credential Secret is mounted
// in this container only (the agent deletes its copy once read).
func newAgentInitCmd(stderr io.Writer) *cobra.Command {
	var to, credFile string
	c := &cobra.Command{
		Use:    "agent-init",
		Short:  "Prepare an agent pod (its init container): copy spotml and the node credential into --to",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if to == "" {
				return errors.New("--to: required: the directory shared with the agent container")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			if err := copyFile(self, filepath.Join(to, "spotml"), 0o755); err != nil {
				return err
			}
			if credFile != "" {
				if err := copyFile(credFile, filepath.Join(to, "credential"), 0o600); err != nil {
					return fmt.Errorf("--credential-file: %w", err)
				}
			}
			fmt.Fprintf(stderr, "spotml agent-init: copied spotml into %s\n", to)
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "directory to copy into")
	c.Flags().StringVar(&credFile, "credential-file", "", "the node credential (the Secret's mounted file)")
	return c
}

// copyFile copies src to dst whole, through a temporary name, so that a
// restarted init container never leaves a half-written binary.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
