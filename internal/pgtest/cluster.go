package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means no PostgreSQL server binaries (initdb and postgres)
// were found, and they were not installed (see [Options.Install]).
var ErrNotInstalled = errors.New("pgtest: PostgreSQL server binaries not found")

// ErrNotLogical means the server named by DATABASE_URL does not have
// wal_level=logical, which logical replication (and so shapeseal) needs.
var ErrNotLogical = errors.New("pgtest: wal_level is not logical")

// Error reports a failed step of starting or reaching a cluster, with the
// tail of the relevant output (the server log, initdb or apt-get output).
type Error struct {
	Op  string // the step that failed: "install", "initdb", "start", "connect", ...
	Err error  // the cause
	Log string // the last lines of output, if any
}

func (e *Error) Error() string {
	s := "pgtest: " + e.Op + ": " + e.Err.Error()
	if e.Log != "" {
		s += "\n--- output tail ---\n" + e.Log
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Options configure [Start] and [Open]. The zero value is ready to use.
type Options struct {
	// Dir is the directory in which the cluster's temporary directory is
	// created; empty means os.TempDir(). When running as root, the
	// "postgres" OS user must be able to reach it.
	Dir string

	// Port is the TCP port to listen on (on 127.0.0.1); 0 picks a free one.
	Port int

	// Install lets Start run "apt-get update" and
	// "apt-get install -y postgresql" when no server binaries are found.
	// It needs root and a Debian-like system.
	Install bool

	// Logf, if not nil, receives progress messages: which binaries are
	// used, installation, the port.
	Logf func(format string, args ...any)
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Cluster is a running PostgreSQL server: a private one from [Start], or the
// one named by DATABASE_URL from [Open]. Its methods are safe for
// concurrent use.
type Cluster struct {
	url      string
	external bool // from DATABASE_URL: Stop leaves it alone

	dir     string // the temporary directory: data/, the socket, postgres.log
	port    int
	bin     string // the server binaries' directory
	owner   *runAs // the OS user the server runs as, nil: ours
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited and been reaped
	waitErr error         // cmd.Wait's result, valid once exited is closed
	stop    func() error

	restartMu sync.Mutex // one Restart at a time
}

// URL returns a connection string for the cluster. For a private cluster it
// is postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable, the
// superuser on the "postgres" database; for a cluster from DATABASE_URL it is
// that variable's value.
func (c *Cluster) URL() string { return c.url }

// Stop shuts a private cluster down (a "fast" shutdown, which disconnects
// clients and rolls back their transactions), waits for it to exit, and
// removes its temporary directory. It is safe to call more than once and
// after the server has died; later calls return the first call's result.
// For a cluster from DATABASE_URL, Stop does nothing.
func (c *Cluster) Stop() error {
	if c.external {
		return nil
	}
	return c.stop()
}

// Start initializes and starts a private cluster in a new temporary
// directory, and returns once it accepts connections. ctx bounds the whole
// startup, including any installation; if ctx has no deadline, waiting for
// the server to accept connections gives up after a minute.
//
// The server process gets SIGINT (a fast shutdown) if the process that
// started it dies, so a crashed or killed test binary does not leave a
// server running; its temporary directory is left behind in that case.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := findBinDir()
	if err != nil && opts.Install {
		ierr := install(ctx, &opts)
		// Even if apt-get failed, another process may have installed it.
		if bin, err = findBinDir(); err != nil && ierr != nil {
			return nil, ierr
		}
	}
	if err != nil {
		return nil, err
	}

	var owner *runAs
	if os.Geteuid() == 0 {
		if owner, err = postgresUser(); err != nil {
			return nil, err
		}
	}

	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	if parent, err = filepath.Abs(parent); err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	dir, err := os.MkdirTemp(parent, "pgtest-")
	if err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	c := &Cluster{dir: dir, bin: bin, owner: owner}
	c.stop = sync.OnceValue(c.shutdown)
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()

	// The server creates its Unix socket in dir; sun_path holds 107 bytes.
	if n := len(dir) + len("/.s.PGSQL.65535"); n > 107 {
		return nil, &Error{Op: "setup", Err: fmt.Errorf("directory %s is too long for a Unix socket path (%d > 107 bytes); use a shorter Options.Dir or TMPDIR", dir, n)}
	}
	if owner != nil {
		if err := os.Chown(dir, int(owner.uid), int(owner.gid)); err != nil {
			return nil, &Error{Op: "setup", Err: err}
		}
	}

	version := "PostgreSQL"
	if out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	opts.logf("pgtest: %s from %s, in %s", version, bin, dir)

	if err := c.initdb(ctx, bin, owner); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				return nil, &Error{Op: "start", Err: fmt.Errorf("finding a free port: %w", err)}
			}
		}
		err = c.launch(ctx, bin, port, owner)
		if err == nil {
			break
		}
		// The free port can be taken between our check and the server's
		// bind; with a port of our choosing, try another.
		if opts.Port == 0 && attempt < 5 && errors.Is(err, errPortInUse) {
			continue
		}
		return nil, err
	}
	opts.logf("pgtest: listening on 127.0.0.1:%d", c.port)
	ok = true
	return c, nil
}

var errPortInUse = errors.New("port already in use")

// Restart stops a private cluster with a fast shutdown (clients are
// disconnected, open transactions rolled back, temporary replication slots
// dropped) and starts it again on the same port and data, as an operator's
// restart would; it returns once the server accepts connections again.
// Tools use it to inject a database restart. It must not be called
// concurrently with Stop; for a cluster from DATABASE_URL it is an error.
func (c *Cluster) Restart(ctx context.Context) error {
	if c.external {
		return &Error{Op: "restart", Err: errors.New("the cluster is DATABASE_URL's, not ours")}
	}
	c.restartMu.Lock()
	defer c.restartMu.Unlock()
	if !c.signalAndWait(syscall.SIGINT, 60*time.Second) {
		c.kill()
	}
	// The port was ours until a moment ago; another process could take it,
	// and then the restart fails rather than moving the cluster.
	return c.launch(ctx, c.bin, c.port, c.owner)
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }
func (c *Cluster) logPath() string { return filepath.Join(c.dir, "postgres.log") }

func (c *Cluster) initdb(ctx context.Context, bin string, owner *runAs) error {
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"--pgdata="+c.dataDir(),
		"--username=postgres",
		"--auth=trust", // local, 127.0.0.1 and ::1, including replication
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync",
	)
	cmd.Dir = c.dir
	cmd.Env = serverEnv()
	cmd.SysProcAttr = sysProcAttr(owner, false)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		} else if owner != nil {
			if rerr := reachable(c.dir, owner); rerr != nil {
				err = fmt.Errorf("%w (running as root, so initdb runs as the postgres OS user, which probably cannot reach %s: %v; use an Options.Dir or TMPDIR that everyone can search, such as /tmp)", err, c.dir, rerr)
			}
		}
		return &Error{Op: "initdb", Err: err, Log: tail(out)}
	}
	return nil
}

// launch starts postgres on port and waits until it accepts connections.
// On failure the process is gone when launch returns.
func (c *Cluster) launch(ctx context.Context, bin string, port int, owner *runAs) error {
	logFile, err := os.OpenFile(c.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return &Error{Op: "start", Err: err}
	}
	defer logFile.Close() // the child has its own copy
	if owner != nil {
		if err := logFile.Chown(int(owner.uid), int(owner.gid)); err != nil {
			return &Error{Op: "start", Err: err}
		}
	}
	fmt.Fprintf(logFile, "pgtest: starting postgres on port %d\n", port)

	settings := []string{
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(port),
		"unix_socket_directories=" + c.dir,
		"wal_level=logical",
		"max_replication_slots=200",
		"max_wal_senders=200",
		"max_connections=500",
		"fsync=off",
		"full_page_writes=off",
		"shared_buffers=128MB",
		"logging_collector=off", // stderr goes to postgres.log
	}
	args := []string{"-D", c.dataDir()}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Dir = c.dir
	cmd.Env = serverEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(owner, true)
	if err := cmd.Start(); err != nil {
		return &Error{Op: "start", Err: err}
	}
	c.cmd, c.port = cmd, port
	c.exited = make(chan struct{})
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	c.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)

	if err := c.waitReady(ctx); err != nil {
		c.kill()
		return err
	}
	return nil
}

// waitReady polls until the server accepts connections, first on its Unix
// socket (which only our server can own, unlike a TCP port), then on TCP.
func (c *Cluster) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	socketURL := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.dir, c.port)
	var lastErr error
	for _, u := range []string{socketURL, c.url} {
		for {
			if lastErr = ping(ctx, u); lastErr == nil {
				break
			}
			select {
			case <-c.exited:
				log := c.logTail()
				err := fmt.Errorf("postgres exited during startup (%v)", c.waitErr)
				if strings.Contains(log, "could not bind") || strings.Contains(log, "already in use") {
					err = fmt.Errorf("%w: %w", errPortInUse, err)
				}
				return &Error{Op: "start", Err: err, Log: log}
			case <-ctx.Done():
				return &Error{Op: "start", Err: fmt.Errorf("waiting for postgres to accept connections: %w (last attempt: %v)", ctx.Err(), lastErr), Log: c.logTail()}
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func ping(ctx context.Context, connString string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// shutdown is Stop's body for a private cluster; it runs once.
func (c *Cluster) shutdown() error {
	var errs []error
	if c.cmd != nil {
		if !c.signalAndWait(syscall.SIGINT, 60*time.Second) { // fast shutdown
			c.kill()
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: removing %s: %w", c.dir, err))
	}
	return errors.Join(errs...)
}

// signalAndWait sends sig to the server unless it has exited, and reports
// whether it has exited within timeout.
func (c *Cluster) signalAndWait(sig syscall.Signal, timeout time.Duration) bool {
	select {
	case <-c.exited:
		return true
	default:
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

// kill stops the server at once and waits for it to be reaped: an
// "immediate shutdown" (SIGQUIT), in which the server still stops and reaps
// its children, else SIGKILL to its whole process group.
func (c *Cluster) kill() {
	if !c.signalAndWait(syscall.SIGQUIT, 10*time.Second) {
		killGroup(c.cmd.Process)
		<-c.exited
	}
}

// logTail returns the end of the server log.
func (c *Cluster) logTail() string {
	b, _ := os.ReadFile(c.logPath())
	return tail(b)
}

// tail returns the last lines of out, at most about 4 KiB of them.
func tail(out []byte) string {
	const max = 4096
	if len(out) > max {
		out = out[len(out)-max:]
		if i := bytes.IndexByte(out, '\n'); i >= 0 {
			out = out[i+1:]
		}
	}
	return strings.TrimSpace(string(out))
}

// serverEnv is the environment for initdb and postgres: ours, with messages
// in English (the harness looks for some) and no locale surprises.
func serverEnv() []string {
	return append(os.Environ(), "LC_ALL=C", "LANG=C", "LANGUAGE=")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runAs is the OS user the server runs as when we are root.
type runAs struct{ uid, gid uint32 }

func postgresUser() (*runAs, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, &Error{Op: "setup", Err: fmt.Errorf(`running as root, PostgreSQL must run as the "postgres" OS user, which does not exist (%v); install the postgresql package, which creates it, or run as another user`, err)}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, &Error{Op: "setup", Err: fmt.Errorf("postgres OS user has non-numeric uid %q or gid %q", u.Uid, u.Gid)}
	}
	return &runAs{uid: uint32(uid), gid: uint32(gid)}, nil
}

// findBinDir returns a directory holding initdb and postgres: the one of
// initdb (or postgres) on $PATH, following symlinks, else the newest
// /usr/lib/postgresql/VERSION/bin.
func findBinDir() (string, error) {
	for _, name := range []string{"initdb", "postgres"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		if dir := filepath.Dir(p); hasServer(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, dir := range dirs {
		if hasServer(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: no initdb on $PATH or in /usr/lib/postgresql/*/bin (on Debian or Ubuntu: apt-get install postgresql; or set DATABASE_URL)", ErrNotInstalled)
}

func hasServer(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// compareVersions compares dotted numeric versions such as "9.6" and "15".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}

var installMu sync.Mutex

// install runs apt-get to install the Debian postgresql package.
func install(ctx context.Context, opts *Options) error {
	installMu.Lock()
	defer installMu.Unlock()
	if _, err := findBinDir(); err == nil {
		return nil // installed by a concurrent Start
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return &Error{Op: "install", Err: fmt.Errorf("%w, and apt-get is not available to install them", ErrNotInstalled)}
	}
	if os.Geteuid() != 0 {
		return &Error{Op: "install", Err: fmt.Errorf("%w, and installing them with apt-get needs root", ErrNotInstalled)}
	}
	opts.logf("pgtest: installing PostgreSQL: apt-get update && apt-get install -y postgresql")
	for _, args := range [][]string{
		{"-o", "DPkg::Lock::Timeout=300", "update"},
		{"-o", "DPkg::Lock::Timeout=300", "install", "-y", "postgresql"},
	} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return &Error{Op: "install", Err: fmt.Errorf("apt-get %s: %w", strings.Join(args, " "), err), Log: tail(out)}
		}
	}
	return nil
}

// Open returns the cluster named by the DATABASE_URL environment variable
// if it is set, after checking that it is reachable and has
// wal_level=logical; [Cluster.Stop] then does nothing. Without DATABASE_URL
// it calls [Start] with opts.
func Open(ctx context.Context, opts Options) (*Cluster, error) {
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		return Start(ctx, opts)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return nil, &Error{Op: "connect", Err: fmt.Errorf("DATABASE_URL %s: %w", redact(u), err)}
	}
	defer conn.Close(context.Background())
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return nil, &Error{Op: "connect", Err: fmt.Errorf("DATABASE_URL %s: SHOW wal_level: %w", redact(u), err)}
	}
	if level != "logical" {
		return nil, &Error{Op: "connect", Err: fmt.Errorf("%w: DATABASE_URL %s has wal_level=%s; set wal_level = logical in postgresql.conf and restart the server", ErrNotLogical, redact(u), level)}
	}
	opts.logf("pgtest: using DATABASE_URL %s", redact(u))
	return &Cluster{url: u, external: true}, nil
}

// redact hides the password of a URL-form connection string.
func redact(connString string) string {
	u, err := url.Parse(connString)
	if err != nil || u.Scheme == "" {
		return "(connection string)"
	}
	return u.Redacted()
}

// withDatabase returns connString with its database replaced by name.
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", err
		}
		u.Path, u.RawPath = "/"+name, ""
		if q := u.Query(); q.Has("dbname") {
			q.Del("dbname")
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	// keyword=value form: a later keyword overrides an earlier one.
	return connString + " dbname=" + name, nil
}
