package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/shapeseal/shapeseal/client"
)

// contactTries is how many requests tail makes to a server it has not yet
// reached before it gives up: with the backoff and dial timeout below, at
// most about 14 s.
const contactTries = 4

// contactHTTPClient bounds connecting and the TLS handshake, not the
// request: live requests are long polls.
var contactHTTPClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 3 * time.Second
	return &http.Client{Transport: t}
}()

// firstContact makes a stream fail fast until it has reached its server
// once: a bounded number of tries, then the error (which names the URL and
// the cause). Once the server has answered, a network error or a 5xx is
// retried without end (within the client's bound on recoveries).
type firstContact struct{ ok atomic.Bool }

func (f *firstContact) apply(o *client.Options) {
	o.Backoff = client.Backoff{Initial: 250 * time.Millisecond, Max: 8 * time.Second, MaxRetries: contactTries - 1}
	if o.HTTPClient == nil {
		o.HTTPClient = contactHTTPClient
	}
	o.OnError = func(err error) *client.Recovery {
		if !f.ok.Load() {
			return nil
		}
		if he, ok := errors.AsType[*client.HTTPError](err); ok && he.StatusCode < 500 && he.StatusCode != http.StatusTooManyRequests {
			return nil // refused: retrying will not help
		}
		return &client.Recovery{}
	}
}

// succeeded records that the server answered.
func (f *firstContact) succeeded() { f.ok.Store(true) }

// wrap explains an error of a stream that never reached its server.
func (f *firstContact) wrap(err error) error {
	if err == nil || f.ok.Load() {
		return err
	}
	var he *client.HTTPError
	if errors.As(err, &he) && he.StatusCode < 500 && he.StatusCode != http.StatusTooManyRequests {
		return err
	}
	return fmt.Errorf("gave up after %d tries: %w", contactTries, err)
}
