// The gitops tier's Git server: Git's smart HTTP protocol for the bare repositories under
// --root, on a loopback address only. Argo CD's repo-server fetches the desired state from it
// (an Application's repoURL is http://127.0.0.1:PORT/NAME.git), and a person or a test pushes
// changes to it with plain `git push`, so the tier needs no Git hosting outside the machine.
//
// It runs `git http-backend` (found in `git --exec-path`) as a CGI program for every request,
// with GIT_HTTP_EXPORT_ALL=1 (every repository under --root is served, no
// git-daemon-export-ok file needed) and http.receivepack=true given through the environment
// (GIT_CONFIG_COUNT/KEY/VALUE, Git >= 2.31), so pushes work without authentication and
// without touching each repository's config. There is no authentication at all: that is why
// it refuses any address that is not a loopback one.
//
// Usage: gitserver --listen 127.0.0.1:PORT --root DIR
// Port 0 picks a free port; the first log line names the address taken. One log line per
// request; SIGINT or SIGTERM stops it. A chunked request body (a push larger than git's
// http.postBuffer) is spooled to a temporary file first: net/http/cgi accepts none.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address HOST:PORT to serve on (port 0: any free port)")
	root := flag.String("root", "", "directory holding the bare repositories to serve (required)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.LUTC)
	log.SetPrefix("gitserver: ")
	if flag.NArg() > 0 {
		fail("unexpected arguments %q", flag.Args())
	}
	if err := checkLoopback(*listen); err != nil {
		fail("%v", err)
	}
	if *root == "" {
		fail("--root DIR is required")
	}
	dir, err := filepath.Abs(*root)
	if err != nil {
		fail("--root: %v", err)
	}
	if info, err := os.Stat(dir); err != nil || !info.IsDir() {
		fail("--root %s is not a directory", dir)
	}
	backend, err := httpBackend()
	if err != nil {
		fail("%v", err)
	}

	handler := &cgi.Handler{
		Path: backend,
		Dir:  dir,
		Env: []string{
			"GIT_PROJECT_ROOT=" + dir,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_COUNT=1",
			"GIT_CONFIG_KEY_0=http.receivepack",
			"GIT_CONFIG_VALUE_0=true",
		},
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("%v", err)
	}
	server := &http.Server{
		Handler:           logRequests(spoolChunked(handler)),
		ReadHeaderTimeout: 30 * time.Second,
	}
	log.Printf("serving %s at http://%s/ (git http-backend %s)", dir, listener.Addr(), backend)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		fail("%v", err)
	}
	log.Printf("stopped")
}

// checkLoopback accepts HOST:PORT whose HOST is a literal loopback IP (127.0.0.0/8 or ::1).
// A name (even localhost) or an empty host (every interface) is refused.
func checkLoopback(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("--listen %q: %v", address, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: refused, the server has no authentication and serves "+
			"a loopback IP only (e.g. 127.0.0.1:PORT or [::1]:PORT)", address)
	}
	return nil
}

// httpBackend is the path of git-http-backend in Git's exec path.
func httpBackend() (string, error) {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return "", fmt.Errorf("git --exec-path: %v (is Git installed?)", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if info, err := os.Stat(backend); err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not an executable (Git without http-backend?)", backend)
	}
	return backend, nil
}

// spoolChunked gives the CGI handler a request body of known length: net/http/cgi refuses a
// chunked one (400), and git sends a push whose pack exceeds http.postBuffer (1 MiB by
// default) chunked. Such a body is first written to a temporary file.
func spoolChunked(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		spool, err := os.CreateTemp("", "gitserver-body-")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer os.Remove(spool.Name())
		defer spool.Close()
		size, err := io.Copy(spool, r.Body)
		if err == nil {
			_, err = spool.Seek(0, io.SeekStart)
		}
		if err != nil {
			http.Error(w, "reading the request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body, r.ContentLength, r.TransferEncoding = spool, size, nil
		next.ServeHTTP(w, r)
	})
}

// statusWriter remembers the status and counts the body bytes of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Flush lets the CGI handler stream a long upload-pack answer.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// logRequests writes one line per request once it is answered.
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		query := ""
		if r.URL.RawQuery != "" {
			query = "?" + r.URL.RawQuery
		}
		log.Printf("%s %s %s%s %d %dB %s", r.RemoteAddr, r.Method, r.URL.Path, query,
			sw.status, sw.bytes, time.Since(start).Round(time.Millisecond))
	})
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gitserver: "+format+"\n", args...)
	os.Exit(2)
}
