package kubetest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// busyboxApplets are linked to /bin/busybox in every image BuildImage makes.
var busyboxApplets = []string{"sh", "cat", "echo", "sleep", "ls", "mkdir", "rm", "cp", "mv",
	"test", "[", "true", "false", "env", "kill", "wc", "grep", "sed", "date", "touch", "id",
	"hostname", "ps", "head", "tail", "seq", "wget", "nc", "chmod", "printf", "pwd", "stat"}

// busyboxPath is Debian busybox-static's binary.
const busyboxPath = "/bin/busybox"

// BuildImage writes a small image rootfs into dir: a static busybox
// (/bin/busybox, with sh, sleep, cat and other applets linked to it), the
// directories a container expects (/tmp, /etc, /proc, /sys, /dev, /root),
// an /etc/passwd with root and nobody, and files, which maps a path in the
// image to a file on this machine to copy there (its mode kept). Register it
// with Cluster.ImportImage; pods name it with imagePullPolicy Never (or
// IfNotPresent).
func BuildImage(dir string, files map[string]string) error {
	for _, d := range []string{"bin", "tmp", "etc", "proc", "sys", "dev", "root", "var/run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
	if err := copyFile(busyboxPath, filepath.Join(dir, "bin", "busybox")); err != nil {
		return fmt.Errorf("copy busybox into the image (install the Debian package busybox-static): %w", err)
	}
	for _, a := range busyboxApplets {
		link := filepath.Join(dir, "bin", a)
		os.Remove(link)
		if err := os.Symlink("busybox", link); err != nil {
			return err
		}
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
	group := "root:x:0:\nnogroup:x:65534:\n"
	if err := os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte(passwd), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "group"), []byte(group), 0o644); err != nil {
		return err
	}
	for in, from := range files {
		to := filepath.Join(dir, filepath.Clean("/"+in))
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		if err := copyFile(from, to); err != nil {
			return fmt.Errorf("copy %s into the image at %s: %w", from, in, err)
		}
	}
	return nil
}

// copyFile copies a regular file, keeping its mode.
func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	os.Remove(to)
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ImportImage makes the image rootfs (a directory, e.g. from BuildImage)
// available under name (e.g. "spotml/agent:test") to every node: played
// nodes run it from the directory, the real kubelet's containerd gets it
// imported as a docker-archive. Pods should use imagePullPolicy Never.
func (c *Cluster) ImportImage(name, rootfs string) error {
	abs, err := filepath.Abs(rootfs)
	if err != nil {
		return err
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return fmt.Errorf("import image %s: rootfs %s is not a directory (build one with kubetest.BuildImage)", name, rootfs)
	}
	if c.real != nil {
		if err := c.real.importImage(name, abs); err != nil {
			return fmt.Errorf("import image %s into containerd: %w", name, err)
		}
	}
	c.mu.Lock()
	c.images[normalizeImage(name)] = abs
	c.mu.Unlock()
	return nil
}

// image returns the rootfs registered for name.
func (c *Cluster) image(name string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dir, ok := c.images[normalizeImage(name)]
	return dir, ok
}

// normalizeImage gives an image name its implied tag, so "x" and "x:latest"
// are one image, as for a container runtime.
func normalizeImage(name string) string {
	last := name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		last = name[i+1:]
	}
	if strings.LastIndexByte(last, ':') < 0 && strings.LastIndexByte(last, '@') < 0 {
		return name + ":latest"
	}
	return name
}
