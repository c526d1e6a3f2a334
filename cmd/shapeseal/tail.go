package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"

	"github.com/shapeseal/shapeseal/client"
)

func init() {
	register(command{"tail", "follow a shape and print its messages as JSON lines", runTail})
}

func runTail(ctx context.Context, args []string) error {
	return tail(ctx, args, os.Stdout, os.Stderr)
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ", ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

const tailUsage = `usage: shapeseal tail [flags] URL

Follows the shape at URL (Electric's /v1/shape, a proxy path, or a bare
base URL such as http://127.0.0.1:3000, to which /v1/shape is added) and
prints every change and control message as one JSON object per line, as
the server sent it; a 409 prints a must-refetch line. Without --live it
exits 0 after the first up-to-date message. Errors go to stderr with a
non-zero exit status.

flags:
`

// tailFlags are tail's flags and its URL.
type tailFlags struct {
	url                            string // the one positional argument
	table, where, columns, replica string
	token, tokenCmd                string
	live                           bool
	offset, handle                 string
	secret                         string
	verbose                        bool
	params, headers                multiFlag
	decrypt                        *decryptFlags
}

// parseTailFlags parses tail's flags, before and after the URL; --help
// returns flag.ErrHelp.
func parseTailFlags(args []string, stderr io.Writer) (*tailFlags, error) {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), tailUsage)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), tailDecryptUsage)
	}
	var f tailFlags
	fs.StringVar(&f.table, "table", "", "root table of the shape")
	fs.StringVar(&f.where, "where", "", "row filter, a SQL boolean expression with $1..$n placeholders")
	fs.StringVar(&f.columns, "columns", "", "comma-separated columns to select (all by default)")
	fs.StringVar(&f.replica, "replica", "", `"full" for full rows in updates and deletes`)
	fs.StringVar(&f.token, "token", "", "bearer token sent as Authorization (a 401 is then an error)")
	fs.StringVar(&f.tokenCmd, "token-command", "", "shell command printing a bearer token; run again after every 401")
	fs.BoolVar(&f.live, "live", false, "keep following the shape after it is up to date")
	fs.StringVar(&f.offset, "offset", "", `offset to resume from ("now" skips existing rows); needs --handle unless -1 or now`)
	fs.StringVar(&f.handle, "handle", "", "shape handle to resume with --offset")
	fs.StringVar(&f.secret, "secret", "", "Electric API secret sent as ?secret= (default $ELECTRIC_SECRET when URL ends in /v1/shape)")
	fs.BoolVar(&f.verbose, "v", false, "log requests and retries to stderr")
	fs.Var(&f.params, "param", "value of the next $n placeholder of --where (repeatable)")
	fs.Var(&f.headers, "header", `extra request header "Name: value" (repeatable)`)
	f.decrypt = addDecryptFlags(fs)

	// Accept flags before and after the URL.
	var positional []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) == 0 && os.Getenv("ELECTRIC_URL") != "" {
		positional = []string{os.Getenv("ELECTRIC_URL")}
	}
	if len(positional) != 1 {
		return nil, usagef("exactly one URL is required, got %d", len(positional))
	}
	if f.token != "" && f.tokenCmd != "" {
		return nil, usagef("--token and --token-command are exclusive")
	}
	f.url = positional[0]
	return &f, nil
}

// tail is runTail with its output streams as parameters (for tests).
func tail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseTailFlags(args, stderr)
	if err != nil {
		return helpOK(err)
	}
	u, err := f.shapeURL()
	if err != nil {
		return err
	}
	opts, err := f.clientOptions(u, stderr)
	if err != nil {
		return err
	}
	var contact firstContact
	contact.apply(&opts)

	var dec *decryptor
	if len(f.decrypt.encrypted) > 0 {
		shapeURL := *u
		if dec, err = f.decrypt.start(ctx, &shapeURL, f.secret, opts, f.verbose, stderr); err != nil {
			return err
		}
		defer dec.close()
		opts.TransformBatch = dec.dec.TransformBatch
	}

	s, err := client.New(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	return printMessages(ctx, s, dec, &contact, stdout, stderr)
}

// shapeURL is the URL to follow: /v1/shape on a bare base URL, with the
// Electric secret (--secret, or $ELECTRIC_SECRET for a /v1/shape URL),
// which f.secret is then.
func (f *tailFlags) shapeURL() (*url.URL, error) {
	u, err := url.Parse(f.url)
	if err != nil {
		return nil, fmt.Errorf("URL: %w", err)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/shape"
	}
	if f.secret == "" && strings.HasSuffix(u.Path, "/v1/shape") {
		f.secret = os.Getenv("ELECTRIC_SECRET")
	}
	if f.secret != "" {
		q := u.Query()
		q.Set("secret", f.secret)
		u.RawQuery = q.Encode()
	}
	return u, nil
}

// clientOptions are the options of the shape stream of u.
func (f *tailFlags) clientOptions(u *url.URL, stderr io.Writer) (client.Options, error) {
	opts := client.Options{
		URL: u.String(),
		Params: client.Params{
			Table: f.table, Where: f.where, Params: f.params, Replica: f.replica,
		},
		Header: http.Header{},
		Live:   f.live,
		Offset: f.offset,
		Handle: f.handle,
	}
	if f.columns != "" {
		for c := range strings.SplitSeq(f.columns, ",") {
			opts.Params.Columns = append(opts.Params.Columns, strings.TrimSpace(c))
		}
	}
	for _, h := range f.headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return opts, fmt.Errorf("--header %q: want \"Name: value\"", h)
		}
		opts.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	switch {
	case f.token != "":
		opts.TokenSource = client.StaticToken(f.token)
	case f.tokenCmd != "":
		cmd := f.tokenCmd
		opts.TokenSource = client.NewSharedTokenSource(func(ctx context.Context) (string, error) {
			return runTokenCommand(ctx, cmd)
		})
	}
	if f.verbose {
		opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return opts, nil
}

// printMessages prints the messages of s to stdout, one JSON object per
// line, flushed at every control message; with dec, changes as decrypted.
func printMessages(ctx context.Context, s *client.ShapeStream, dec *decryptor, contact *firstContact, stdout, stderr io.Writer) error {
	w := bufio.NewWriterSize(stdout, 64<<10)
	defer w.Flush()
	for m, err := range s.Messages(ctx) {
		if err != nil {
			w.Flush()
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil // interrupted
			}
			return contact.wrap(err)
		}
		contact.succeeded()
		if dec != nil && m.IsMustRefetch() {
			dec.dec.Forget() // the rows it remembers may be gone
		}
		if dec != nil && m.IsChange() {
			if err := dec.err(); err != nil {
				w.Flush()
				return err
			}
			dec.warnNoKeys(m, stderr)
			b, err := m.MarshalJSON()
			if err != nil {
				return err
			}
			w.Write(b)
		} else {
			w.Write(m.Raw())
		}
		w.WriteByte('\n')
		if m.IsControl() {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

// runTokenCommand runs cmd with the shell and returns its trimmed output.
// The token is never logged; the command's stderr passes through.
func runTokenCommand(ctx context.Context, cmd string) (string, error) {
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Stderr = os.Stderr
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("--token-command: %w", err)
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" {
		return "", errors.New("--token-command printed no token")
	}
	return tok, nil
}
