package kubetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// prepareVolumes makes each of the pod's volumes as a directory of the
// pod: emptyDir empty, secret, configMap, downwardAPI and projected ones
// filled (service account tokens from the TokenRequest API, bound to the
// pod, as the kubelet does), hostPath as the path itself. It returns each
// volume's host directory by name.
func (r *podRun) prepareVolumes(pod *corev1.Pod) (map[string]string, error) {
	ctx := r.n.ctx
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(r.dir, "volumes", v.Name)
		src := v.VolumeSource
		var files map[string]fileData
		var err error
		switch {
		case src.EmptyDir != nil:
		case src.HostPath != nil:
			t := ptr.Deref(src.HostPath.Type, corev1.HostPathUnset)
			if t == corev1.HostPathDirectoryOrCreate {
				os.MkdirAll(src.HostPath.Path, 0o755)
			}
			out[v.Name] = src.HostPath.Path
			continue
		case src.Secret != nil:
			files, err = r.secretFiles(ctx, src.Secret.SecretName, src.Secret.Items, ptr.Deref(src.Secret.Optional, false), src.Secret.DefaultMode)
		case src.ConfigMap != nil:
			files, err = r.configMapFiles(ctx, src.ConfigMap.Name, src.ConfigMap.Items, ptr.Deref(src.ConfigMap.Optional, false), src.ConfigMap.DefaultMode)
		case src.DownwardAPI != nil:
			files, err = r.downwardFiles(pod, src.DownwardAPI.Items, src.DownwardAPI.DefaultMode)
		case src.Projected != nil:
			files = map[string]fileData{}
			for _, s := range src.Projected.Sources {
				var part map[string]fileData
				switch {
				case s.Secret != nil:
					part, err = r.secretFiles(ctx, s.Secret.Name, s.Secret.Items, ptr.Deref(s.Secret.Optional, false), src.Projected.DefaultMode)
				case s.ConfigMap != nil:
					part, err = r.configMapFiles(ctx, s.ConfigMap.Name, s.ConfigMap.Items, ptr.Deref(s.ConfigMap.Optional, false), src.Projected.DefaultMode)
				case s.DownwardAPI != nil:
					part, err = r.downwardFiles(pod, s.DownwardAPI.Items, src.Projected.DefaultMode)
				case s.ServiceAccountToken != nil:
					part, err = r.tokenFile(ctx, pod, s.ServiceAccountToken, src.Projected.DefaultMode)
				default:
					err = fmt.Errorf("volume %s: a projected source other than secret, configMap, downwardAPI or serviceAccountToken is not played", v.Name)
				}
				if err != nil {
					break
				}
				for k, f := range part {
					files[k] = f
				}
			}
		default:
			return nil, fmt.Errorf("volume %s: only emptyDir, hostPath, secret, configMap, downwardAPI and projected volumes are played by kubetest's nodes", v.Name)
		}
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, err
		}
		if src.EmptyDir != nil {
			os.Chmod(dir, 0o777)
		}
		for name, f := range files {
			path := filepath.Join(dir, filepath.Clean("/"+name))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(path, f.data, f.mode); err != nil {
				return nil, err
			}
		}
		out[v.Name] = dir
	}
	return out, nil
}

type fileData struct {
	data []byte
	mode os.FileMode
}

func mode(def *int32, item *int32) os.FileMode {
	if item != nil {
		return os.FileMode(*item)
	}
	if def != nil {
		return os.FileMode(*def)
	}
	return 0o644
}

// keyFiles maps data keys to files: all keys, or the items' keys to their
// paths.
func keyFiles(data map[string][]byte, items []corev1.KeyToPath, def *int32, what string) (map[string]fileData, error) {
	out := map[string]fileData{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = fileData{v, mode(def, nil)}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = fileData{v, mode(def, it.Mode)}
	}
	return out, nil
}

func (r *podRun) secretFiles(ctx context.Context, name string, items []corev1.KeyToPath, optional bool, def *int32) (map[string]fileData, error) {
	s, err := r.n.c.Client.CoreV1().Secrets(r.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return keyFiles(s.Data, items, def, "secret "+name)
}

func (r *podRun) configMapFiles(ctx context.Context, name string, items []corev1.KeyToPath, optional bool, def *int32) (map[string]fileData, error) {
	cm, err := r.n.c.Client.CoreV1().ConfigMaps(r.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items, def, "configmap "+name)
}

func (r *podRun) downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def *int32) (map[string]fileData, error) {
	out := map[string]fileData{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = r.fieldRef(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = r.resourceRef(pod, nil, it.ResourceFieldRef)
		}
		if err != nil {
			return nil, err
		}
		out[it.Path] = fileData{[]byte(v), mode(def, it.Mode)}
	}
	return out, nil
}

// tokenFile requests a token for the pod's service account, bound to the
// pod, through the TokenRequest API.
func (r *podRun) tokenFile(ctx context.Context, pod *corev1.Pod, s *corev1.ServiceAccountTokenProjection, def *int32) (map[string]fileData, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: s.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if s.Audience != "" {
		req.Spec.Audiences = []string{s.Audience}
	}
	tok, err := r.n.c.Client.CoreV1().ServiceAccounts(r.namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for service account %s: %w", sa, err)
	}
	return map[string]fileData{s.Path: {[]byte(tok.Status.Token), mode(def, nil)}}, nil
}

// fieldRef resolves a downward API field path.
func (r *podRun) fieldRef(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.hostIP", "status.podIPs", "status.hostIPs":
		return r.n.Address, nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if strings.HasPrefix(path, prefix+"['") && strings.HasSuffix(path, "']") {
			return m[path[len(prefix)+2:len(path)-2]], nil
		}
	}
	return "", fmt.Errorf("fieldRef %q is not played by kubetest's nodes", path)
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return b.String()
}

// resourceRef resolves a resourceFieldRef: the container's limit (the
// node's allocatable when it has none) or request, over the divisor.
func (r *podRun) resourceRef(pod *corev1.Pod, c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	if c == nil || (ref.ContainerName != "" && ref.ContainerName != c.Name) {
		c = nil
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == ref.ContainerName {
				c = &pod.Spec.Containers[i]
			}
		}
		if c == nil {
			return "", fmt.Errorf("resourceFieldRef %s: no container %q", ref.Resource, ref.ContainerName)
		}
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", fmt.Errorf("resourceFieldRef %q: want limits.<name> or requests.<name>", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	var q resource.Quantity
	switch kind {
	case "limits":
		if v, ok := c.Resources.Limits[rn]; ok {
			q = v
		} else {
			q = r.n.opts.Allocatable[rn]
		}
	case "requests":
		q = c.Resources.Requests[rn]
	default:
		return "", fmt.Errorf("resourceFieldRef %q: want limits.<name> or requests.<name>", ref.Resource)
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	if rn == corev1.ResourceCPU {
		v := (q.MilliValue() + div.MilliValue() - 1) / div.MilliValue()
		return strconv.FormatInt(v, 10), nil
	}
	v := (q.Value() + div.Value() - 1) / div.Value()
	return strconv.FormatInt(v, 10), nil
}

// containerSpec works out what runs in container c: its command (the
// image's directories carry no entrypoint, so a pod must give one), its
// environment (env and envFrom, downward API, secret and configMap keys,
// $(VAR) references, and the kubernetes service's variables pointing at
// the apiserver), working directory, user and mounts.
func (r *podRun) containerSpec(pod *corev1.Pod, c corev1.Container) (ctrSpec, error) {
	ctx := r.n.ctx
	args := append(append([]string(nil), c.Command...), c.Args...)
	if len(c.Command) == 0 {
		return ctrSpec{}, fmt.Errorf("container %s has no command: kubetest images have no entrypoint, give the container a command", c.Name)
	}
	port := strconv.Itoa(r.n.c.apiPort)
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME=" + pod.Name,
		// The apiserver as pods reach it here: the kubernetes Service's
		// variables, so that rest.InClusterConfig works in a played pod.
		"KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=" + port,
		"KUBERNETES_SERVICE_PORT_HTTPS=" + port, "KUBERNETES_PORT=tcp://127.0.0.1:" + port,
	}
	vars := map[string]string{}
	set := func(k, v string) {
		vars[k] = v
		env = append(env, k+"="+v)
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.SecretRef != nil:
			s, err := r.n.c.Client.CoreV1().Secrets(r.namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if ptr.Deref(from.SecretRef.Optional, false) {
					continue
				}
				return ctrSpec{}, fmt.Errorf("container %s envFrom secret %q: %w", c.Name, from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		case from.ConfigMapRef != nil:
			cm, err := r.n.c.Client.CoreV1().ConfigMaps(r.namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if ptr.Deref(from.ConfigMapRef.Optional, false) {
					continue
				}
				return ctrSpec{}, fmt.Errorf("container %s envFrom configmap %q: %w", c.Name, from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		v := expand(e.Value, vars)
		if f := e.ValueFrom; f != nil {
			var err error
			switch {
			case f.FieldRef != nil:
				v, err = r.fieldRef(pod, f.FieldRef.FieldPath)
			case f.ResourceFieldRef != nil:
				v, err = r.resourceRef(pod, &c, f.ResourceFieldRef)
			case f.SecretKeyRef != nil:
				var s *corev1.Secret
				s, err = r.n.c.Client.CoreV1().Secrets(r.namespace).Get(ctx, f.SecretKeyRef.Name, metav1.GetOptions{})
				if err == nil {
					b, ok := s.Data[f.SecretKeyRef.Key]
					if !ok && !ptr.Deref(f.SecretKeyRef.Optional, false) {
						err = fmt.Errorf("secret %q has no key %q", f.SecretKeyRef.Name, f.SecretKeyRef.Key)
					}
					v = string(b)
				} else if ptr.Deref(f.SecretKeyRef.Optional, false) {
					continue
				}
			case f.ConfigMapKeyRef != nil:
				var cm *corev1.ConfigMap
				cm, err = r.n.c.Client.CoreV1().ConfigMaps(r.namespace).Get(ctx, f.ConfigMapKeyRef.Name, metav1.GetOptions{})
				if err == nil {
					s, ok := cm.Data[f.ConfigMapKeyRef.Key]
					if !ok && !ptr.Deref(f.ConfigMapKeyRef.Optional, false) {
						err = fmt.Errorf("configmap %q has no key %q", f.ConfigMapKeyRef.Name, f.ConfigMapKeyRef.Key)
					}
					v = s
				} else if ptr.Deref(f.ConfigMapKeyRef.Optional, false) {
					continue
				}
			}
			if err != nil {
				return ctrSpec{}, fmt.Errorf("container %s env %s: %w", c.Name, e.Name, err)
			}
		}
		set(e.Name, v)
	}
	for i := range args {
		args[i] = expand(args[i], vars)
	}
	s := ctrSpec{args: args, env: env, cwd: c.WorkingDir, hostname: pod.Name}
	if sc := c.SecurityContext; sc != nil {
		s.uid = uint32(ptr.Deref(sc.RunAsUser, 0))
		s.gid = uint32(ptr.Deref(sc.RunAsGroup, 0))
	} else if psc := pod.Spec.SecurityContext; psc != nil {
		s.uid = uint32(ptr.Deref(psc.RunAsUser, 0))
		s.gid = uint32(ptr.Deref(psc.RunAsGroup, 0))
	}
	for _, m := range c.VolumeMounts {
		dir, ok := r.mounts[m.Name]
		if !ok {
			return ctrSpec{}, fmt.Errorf("container %s mounts volume %q, which the pod does not have", c.Name, m.Name)
		}
		src := dir
		if m.SubPath != "" {
			src = filepath.Join(dir, filepath.Clean("/"+m.SubPath))
			if _, err := os.Stat(src); os.IsNotExist(err) {
				os.MkdirAll(src, 0o777)
			}
		}
		s.mounts = append(s.mounts, mount{source: src, target: m.MountPath, readOnly: m.ReadOnly})
	}
	return s, nil
}

// expand replaces $(NAME) with the variable's value where it is defined,
// and $$ with $, as Kubernetes does in env values, command and args.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			if j := strings.IndexByte(s[i+2:], ')'); j >= 0 {
				name := s[i+2 : i+2+j]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
					i += 2 + j
					continue
				}
			}
			b.WriteByte('$')
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
