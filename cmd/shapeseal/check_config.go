package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/shapeseal/shapeseal/proxy"
)

// The rows that read the proxy's config.

const noConfig = "no --proxy-config"

func (c *checker) checkWherePinned(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	var unpinned, fixed, unknown []string
	pinned := 0
	for _, r := range c.cfg.Shapes {
		switch r.Kind {
		case proxy.KindTenantKeys:
			pinned++ // user_id = $user by construction
			continue
		case "", proxy.KindTable:
		default:
			unknown = append(unknown, fmt.Sprintf("%s (kind %s)", r.Name, r.Kind))
			continue
		}
		switch {
		case strings.TrimSpace(r.Where) == "":
			unpinned = append(unpinned, fmt.Sprintf("%s (table %s)", r.Name, r.Table))
		case len(r.Params) == 0:
			fixed = append(fixed, r.Name)
		default:
			pinned++
		}
	}
	if len(unpinned) > 0 {
		return checkFail("rule %s has no where: any valid token reads the whole table. Pin it to the token, e.g. where: \"tenant_id = ANY($1::text[])\" with params: [$tenants]; the config has no public marker, so a table meant for every token needs its filter written out as a where without params",
			strings.Join(unpinned, ", rule "))
	}
	detail := fmt.Sprintf("%d of %d rules pinned to the token", pinned, len(c.cfg.Shapes))
	if len(fixed) > 0 {
		detail += "; a fixed where (the same rows for every token): " + strings.Join(fixed, ", ")
	}
	if len(unknown) > 0 {
		detail += "; not checked: " + strings.Join(unknown, ", ")
	}
	return checkOK("%s", detail)
}

// maxLeeway is the clock skew the tokens row accepts.
const maxLeeway = 5 * time.Minute

func (c *checker) checkTokens(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	a := c.cfg.Auth
	var problems []string
	if len(a.Algorithms) == 0 {
		problems = append(problems, "auth.algorithms is empty: list the algorithms your issuer signs with")
	}
	for _, alg := range a.Algorithms {
		if strings.EqualFold(alg, "none") {
			problems = append(problems, `auth.algorithms lists "none": remove it`)
		}
	}
	if a.Leeway < 0 || a.Leeway > maxLeeway {
		problems = append(problems, fmt.Sprintf("auth.leeway %s lets expired tokens in that long: keep it within %s (30s is usual)", a.Leeway, maxLeeway))
	}
	if a.Issuer == "" {
		problems = append(problems, "auth.issuer is not set: tokens of any issuer the keys verify are accepted; set it")
	}
	if len(a.Audience) == 0 {
		problems = append(problems, "auth.audience is not set: tokens the issuer minted for other applications are accepted; set it")
	}
	if len(problems) > 0 {
		return checkFail("%s", strings.Join(problems, "; "))
	}
	return checkOK("exp required (always), leeway %s, issuer and audience pinned; the proxy has no maximum token age, so keep the issuer's token lifetime short", a.Leeway)
}

func (c *checker) checkRateLimits(context.Context) checkResult {
	if c.cfg == nil {
		return checkSkip(noConfig)
	}
	l := c.cfg.Limits
	var parts, off []string
	describe := func(name string, v float64, def string) {
		switch {
		case v < 0:
			off = append(off, name)
		case v == 0:
			parts = append(parts, fmt.Sprintf("%s %s (default)", name, def))
		default:
			parts = append(parts, fmt.Sprintf("%s %g", name, v))
		}
	}
	describe("requests_per_second", l.RequestsPerSecond, "20")
	describe("burst", float64(l.Burst), "100")
	describe("max_live_per_user", float64(l.MaxLivePerUser), "32")
	if len(off) > 0 {
		return checkFail("limits.%s negative: the limit is off; set a positive value (or leave it out for the default)", strings.Join(off, ", limits."))
	}
	timeout := "5m0s (default)"
	if l.UpstreamTimeout > 0 {
		timeout = l.UpstreamTimeout.String()
	}
	return checkOK("%s, upstream_timeout %s", strings.Join(parts, ", "), timeout)
}
