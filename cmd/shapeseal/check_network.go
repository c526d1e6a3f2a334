package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The rows that ask Electric and look at its and the proxy's addresses.

func (c *checker) shapeURL(secret string) string {
	q := url.Values{"table": {c.table}, "offset": {"-1"}}
	if secret != "" {
		q.Set("secret", secret)
	}
	return c.electric.String() + "/v1/shape?" + q.Encode()
}

func (c *checker) checkSecret(ctx context.Context) checkResult {
	const advice = "set ELECTRIC_SECRET on Electric (and the same in the proxy's environment)"
	status, _, err := c.get(ctx, c.shapeURL(""))
	switch {
	case err != nil:
		return checkSkip("Electric at %s did not answer: %v", shown(c.electric), err)
	case status == http.StatusOK:
		return checkFail("Electric serves shapes without a secret: %s", advice)
	case status >= 500:
		return checkSkip("Electric answered %d to a shape request without a secret; check again once it is healthy", status)
	case status != http.StatusUnauthorized && status != http.StatusForbidden:
		return checkFail("Electric answered %d, not 401, to a shape request without a secret: it does not check one; %s", status, advice)
	}
	if c.secret == "" {
		return checkOK("Electric answers %d without a secret (no --electric-secret or $ELECTRIC_SECRET to try)", status)
	}
	with, _, err := c.get(ctx, c.shapeURL(c.secret))
	switch {
	case err != nil:
		return checkSkip("Electric answers %d without a secret, but did not answer with it: %v", status, err)
	case with == http.StatusUnauthorized || with == http.StatusForbidden:
		return checkFail("Electric answers %d without a secret and %d with the given one: it is not Electric's secret; give the proxy (ELECTRIC_SECRET) the one Electric has", status, with)
	}
	if with == http.StatusBadRequest && c.table == checkProbeTable {
		return checkOK("Electric answers %d without a secret and accepts the given one (then 400: the probe's table does not exist)", status)
	}
	return checkOK("Electric answers %d without a secret and accepts the given one (%d)", status, with)
}

// hostPort returns the lowercased host and the port (default by scheme).
func hostPort(u *url.URL) (string, string) {
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		host = "127.0.0.1" // ::1 and 127.x alike
	}
	return host, port
}

// cgnat is the shared address space (RFC 6598): not routed on the internet.
var cgnat = &net.IPNet{IP: net.IPv4(100, 64, 0, 0), Mask: net.CIDRMask(10, 32)}

func privateIP(ip net.IP) bool {
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || cgnat.Contains(ip)
}

func (c *checker) checkNotPublic(ctx context.Context) checkResult {
	eh, ep := hostPort(c.electric)
	portNote := "no --proxy-url to compare with"
	if c.proxyURL != nil {
		ph, pp := hostPort(c.proxyURL)
		if eh == ph && ep == pp {
			return checkFail("Electric (%s) is at the proxy's address (%s): clients must reach Electric only through the proxy; serve them on different ports and keep Electric's private", shown(c.electric), shown(c.proxyURL))
		}
		portNote = "not the proxy's " + net.JoinHostPort(ph, pp)
	}
	host := c.electric.Hostname()
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil || len(addrs) == 0 {
			return checkSkip("cannot resolve %s to see its address (%v); its port is %s", host, err, portNote)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	var shownIPs []string
	for _, ip := range ips {
		if !privateIP(ip) {
			return checkFail("Electric's address %s (%s) is public: bind Electric to a private interface or firewall its port, so that only the proxy reaches it", ip, host)
		}
		shownIPs = append(shownIPs, ip.String())
	}
	return checkOK("Electric at %s is on a loopback or private address (%s), %s", net.JoinHostPort(host, ep), strings.Join(shownIPs, ", "), portNote)
}

func (c *checker) checkHealth(ctx context.Context) checkResult {
	status, body, err := c.get(ctx, c.electric.String()+"/v1/health")
	if err != nil {
		return checkFail("Electric at %s did not answer: %v", shown(c.electric), err)
	}
	if status != http.StatusOK {
		return checkFail("Electric's /v1/health answered %d %s: see Electric's logs (replication, database connection)", status, abbrevBody(body))
	}
	detail := fmt.Sprintf("Electric %d %s", status, abbrevBody(body))
	if c.proxyURL == nil {
		return checkOK("%s (no --proxy-url for the proxy's /healthz)", detail)
	}
	status, body, err = c.get(ctx, c.proxyURL.String()+"/healthz")
	if err != nil {
		return checkFail("%s, but the proxy at %s did not answer: %v", detail, shown(c.proxyURL), err)
	}
	if status != http.StatusOK {
		return checkFail("%s, but the proxy's /healthz answered %d %s: check the proxy's upstream and its logs", detail, status, abbrevBody(body))
	}
	return checkOK("%s, proxy %d %s", detail, status, abbrevBody(body))
}

func abbrevBody(b string) string {
	b = strings.Join(strings.Fields(b), " ")
	if len(b) > 80 {
		b = b[:80] + "…"
	}
	return b
}

func (c *checker) checkTLS(context.Context) checkResult {
	switch {
	case c.behindTLS:
		return checkOK("TLS terminates in front of the proxy (--behind-tls)")
	case c.proxyURL == nil:
		return checkSkip("no --proxy-url (or --behind-tls)")
	case c.proxyURL.Scheme == "https":
		return checkOK("the proxy is served over https")
	case isLoopbackHost(c.proxyURL.Hostname()):
		return checkSkip("the proxy at %s listens on loopback only, out of the network's reach (serve it over https, or behind TLS, once it is not)", shown(c.proxyURL))
	}
	return checkFail("the proxy URL %s is plain http: tokens and key shapes would cross the network in clear; serve it over https, or pass --behind-tls if TLS terminates in front of it", shown(c.proxyURL))
}

// isLoopbackHost reports whether host names the local machine only.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
