package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// DeleteOptions name the shape(s) to drop upstream.
type DeleteOptions struct {
	// URL is the /v1/shape endpoint of Electric. Query parameters already in
	// the URL are kept (a secret or api_secret among them is redacted from
	// errors, as Secret is).
	URL string
	// Table is the shape's root table, as in Params.Table. Required.
	Table string
	// Handle, if set, drops the shape only if Table's shape still has this
	// handle; Electric answers 400 when the table's shape has another one.
	Handle string
	// Secret is Electric's API secret (ELECTRIC_SECRET), sent as the secret
	// query parameter. It is never logged or put in errors.
	Secret string
	// HTTPClient makes the request; nil means http.DefaultClient. Redirects
	// are never followed, whatever its CheckRedirect.
	HTTPClient *http.Client
}

// DeleteShape asks Electric to drop the log of a table's shape
// (DELETE /v1/shape?table=…). Readers of the dropped shape get a 409
// must-refetch on their next request, and every reader that starts from
// offset -1 gets a fresh snapshot of the table as it is now, instead of the
// shape's log replayed from its old snapshot.
//
// Use it after rewriting a whole table, typically after re-encrypting its
// cells under a new key (keysync.Reencrypt, `shapeseal reencrypt`) and
// retiring the old key: otherwise the shape log still holds the old
// snapshot and every update made since, that is, the old ciphertext, and a
// device syncing from scratch would download cells it can no longer (or
// should no longer) decrypt before reaching the re-encrypted ones. Run it
// after the rewrite has committed: a reader that requests the shape during
// the rewrite recreates it from a snapshot that still holds old cells.
//
// Electric identifies the shape by its definition: with only a table, that
// is the shape of the whole table (no where, columns or other parameters).
// Shapes of the same table with other definitions are not dropped.
//
// DeleteShape returns nil on any 2xx response (Electric answers 202). Any
// other status is an [*HTTPError] (use errors.As) whose URL has the secret
// redacted and whose Body and Header have it removed. Statuses of note:
//   - 405: shape deletion is disabled. Electric allows it only when started
//     with ELECTRIC_ENABLE_INTEGRATION_TESTING; electrictest only with
//     Options.AllowDelete.
//   - 401: the secret is missing or wrong.
//   - 404: there is no such shape (nobody has requested it since it was
//     created or last dropped), so there is no log to drop either.
//   - 400: an invalid table name, or Handle is not the table's current
//     shape.
//   - 3xx: redirects are not followed: a DELETE must reach Electric itself.
//
// DeleteShape sends no Authorization header: it talks to Electric directly,
// not through a proxy that forwards only GET requests.
func DeleteShape(ctx context.Context, opts DeleteOptions) error {
	if opts.URL == "" {
		return errors.New("client: DeleteOptions.URL is required")
	}
	if opts.Table == "" {
		return errors.New("client: DeleteOptions.Table is required")
	}
	u, secrets, err := deleteURL(opts)
	if err != nil {
		return err
	}
	redacted := redactURL(u)

	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return fmt.Errorf("client: DELETE %s: %s", redacted, scrubSecrets(unwrapURLError(err).Error(), secrets))
	}
	hc := http.DefaultClient
	if opts.HTTPClient != nil {
		hc = opts.HTTPClient
	}
	// A copy that does not follow redirects: Go turns a DELETE into a GET
	// on 301/302, which would "succeed" without deleting anything, and the
	// new location would get the secret.
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Not the *url.Error itself: its URL holds the secret.
		return fmt.Errorf("client: DELETE %s: %s", redacted, scrubSecrets(unwrapURLError(err).Error(), secrets))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return nil
	}
	return scrubbedHTTPError(resp, redacted, secrets)
}

// deleteURL returns the URL of DeleteShape's request, and the secrets to
// keep out of errors: opts.Secret, and any secret, api_secret or password
// that opts.URL holds.
func deleteURL(opts DeleteOptions) (*url.URL, []string, error) {
	var secrets []string
	if opts.Secret != "" {
		secrets = append(secrets, opts.Secret)
	}
	base, err := url.Parse(opts.URL)
	if err != nil {
		// The parse error quotes the URL, which may hold a secret.
		return nil, nil, fmt.Errorf("client: DeleteOptions.URL: %s", scrubSecrets(unwrapURLError(err).Error(), secrets))
	}
	if base.Scheme != "http" && base.Scheme != "https" {
		return nil, nil, errors.New("client: DeleteOptions.URL is not an http(s) URL")
	}
	q := base.Query()
	for _, k := range []string{"secret", "api_secret"} {
		for _, v := range q[k] {
			if v != "" {
				secrets = append(secrets, v)
			}
		}
	}
	if p, ok := base.User.Password(); ok && p != "" {
		secrets = append(secrets, p)
	}
	q.Set("table", opts.Table)
	if opts.Handle != "" {
		q.Set("handle", opts.Handle)
	}
	if opts.Secret != "" {
		// Electric 1.x reads secret, falling back to the legacy api_secret.
		q.Del("api_secret")
		q.Set("secret", opts.Secret)
	}
	u := *base
	u.RawQuery = q.Encode()
	return &u, secrets, nil
}

// scrubbedHTTPError reads the error response resp into an *HTTPError whose
// Body and Header have the secrets removed.
func scrubbedHTTPError(resp *http.Response, redacted string, secrets []string) *HTTPError {
	body := readErrorBody(resp)
	if len(secrets) > 0 {
		body = []byte(scrubSecrets(string(body), secrets))
	}
	hdr := resp.Header.Clone()
	for k, vs := range hdr {
		for i, v := range vs {
			vs[i] = scrubSecrets(v, secrets)
		}
		hdr[k] = vs
	}
	return &HTTPError{
		StatusCode: resp.StatusCode,
		Status:     resp.Status,
		Body:       body,
		Header:     hdr,
		URL:        redacted,
	}
}

// scrubSecrets replaces every secret in s, as is or query-escaped, with
// REDACTED.
func scrubSecrets(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "REDACTED")
		if esc := url.QueryEscape(sec); esc != sec {
			s = strings.ReplaceAll(s, esc, "REDACTED")
		}
		if esc := url.PathEscape(sec); esc != sec {
			s = strings.ReplaceAll(s, esc, "REDACTED")
		}
	}
	return s
}
