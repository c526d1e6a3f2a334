package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/shapeseal/shapeseal/internal/pgident"
)

// validRuleName accepts a shape rule's name: 1–64 of A–Z a–z 0–9 _ -
func validRuleName(s string) bool {
	return allIn(s, 1, 64, func(c byte) bool { return isAlnum(c) || c == '_' || c == '-' })
}

// TenantKeysTable is the table a KindTenantKeys rule serves.
const TenantKeysTable = "shapeseal_tenant_keys"

// rule is a compiled ShapeRule.
type rule struct {
	ShapeRule
	columns  []string // canonical allowlist
	allowed  map[string]bool
	perUser  bool
	roles    map[string]bool
	nParams  int
	tenantKs bool
}

func compileRule(r ShapeRule) (*rule, error) {
	c := &rule{ShapeRule: r, allowed: map[string]bool{}}
	if !validRuleName(r.Name) {
		return nil, fmt.Errorf("proxy: shape name %q: use letters, digits, '_' and '-'", r.Name)
	}
	switch r.Kind {
	case "", KindTable:
		if r.Table == "" {
			return nil, fmt.Errorf("proxy: shape %q: Table is required", r.Name)
		}
	case KindTenantKeys:
		if r.Table != "" || r.Where != "" || len(r.Params) > 0 {
			return nil, fmt.Errorf("proxy: shape %q: a tenant_keys rule takes no Table, Where or Params", r.Name)
		}
		c.Table = TenantKeysTable
		c.tenantKs = true
		c.perUser = true
	default:
		return nil, fmt.Errorf("proxy: shape %q: unknown kind %q", r.Name, r.Kind)
	}
	parts := splitOutsideQuotes(c.Table, '.')
	if len(parts) > 2 {
		return nil, fmt.Errorf("proxy: shape %q: bad table %q", r.Name, r.Table)
	}
	for _, p := range parts {
		if _, err := parseIdent(p); err != nil {
			return nil, fmt.Errorf("proxy: shape %q: bad table %q: %v", r.Name, r.Table, err)
		}
	}
	// $n placeholders must be exactly 1..len(Params).
	used := map[int]bool{}
	for _, m := range reParam.FindAllStringSubmatch(r.Where, -1) {
		n, err := strconv.Atoi(m[1])
		if err != nil || n < 1 || n > len(r.Params) {
			return nil, fmt.Errorf("proxy: shape %q: where uses $%s but %d params are configured", r.Name, m[1], len(r.Params))
		}
		used[n] = true
	}
	if len(used) != len(r.Params) {
		return nil, fmt.Errorf("proxy: shape %q: every one of the %d params must be used in where", r.Name, len(r.Params))
	}
	for _, p := range r.Params {
		if p == "" {
			return nil, fmt.Errorf("proxy: shape %q: empty claim path in Params", r.Name)
		}
	}
	c.nParams = len(r.Params)
	if c.nParams > 0 {
		c.perUser = true
	}
	for _, col := range r.Columns {
		id, err := parseIdent(col)
		if err != nil {
			return nil, fmt.Errorf("proxy: shape %q: column %q: %v", r.Name, col, err)
		}
		if !c.allowed[id] {
			c.allowed[id] = true
			c.columns = append(c.columns, id)
		}
	}
	switch r.Replica {
	case "", "default", "full":
	default:
		return nil, fmt.Errorf("proxy: shape %q: replica %q", r.Name, r.Replica)
	}
	switch r.Cache {
	case CacheAuto, CachePrivate, CacheNone:
	default:
		return nil, fmt.Errorf("proxy: shape %q: cache mode %q", r.Name, r.Cache)
	}
	if len(r.Roles) > 0 {
		c.perUser = true // not for everyone: keep it out of shared caches
		c.roles = map[string]bool{}
		for _, role := range r.Roles {
			c.roles[role] = true
		}
	}
	return c, nil
}

// errForbidden is returned when a verified token may not read a shape.
var errForbidden = errors.New("forbidden")

// claimValue resolves a Params path for an identity.
func claimValue(id *Identity, a AuthConfig, path string) (string, bool) {
	switch path {
	case "$user":
		return id.UserID, id.UserID != ""
	case "$device":
		return id.DeviceID, id.DeviceID != ""
	case "$tenants":
		if id.Tenants == nil {
			return "", false
		}
		return pgident.TextArray(id.Tenants), true
	}
	raw, ok := lookup(id.Claims, path)
	if !ok {
		return "", false
	}
	if s, ok := scalarString(raw); ok {
		return s, true
	}
	if arr, ok := raw.([]any); ok {
		list, ok := stringList(arr)
		if !ok {
			return "", false
		}
		return pgident.TextArray(list), true
	}
	return "", false
}

// upstreamQuery builds the whole upstream query: the client's validated
// position parameters plus the rule's pinned definition and the secret.
// Nothing from the client is copied except values that passed validation.
// It also returns the request as Config.Authorize sees it.
func (r *rule) upstreamQuery(q *clientQuery, id *Identity, a AuthConfig, secret string) (url.Values, *Request, error) {
	if r.roles != nil && !slices.ContainsFunc(id.Roles, func(s string) bool { return r.roles[s] }) {
		return nil, nil, fmt.Errorf("%w: role not allowed for shape %q", errForbidden, r.Name)
	}
	req := &Request{Shape: r.Name, Table: r.Table, Where: r.Where}
	switch {
	case r.tenantKs:
		req.Where, req.Params = "user_id = $1", []string{id.UserID}
		if raw, named := lookup(id.Claims, a.claim(a.DeviceClaim, "device_id")); named {
			// A device claim narrows the keys to that device; one that
			// names no device ("" or not a string) must not widen them
			// to every device of the user.
			device, ok := raw.(string)
			if !ok || device == "" {
				return nil, nil, fmt.Errorf("%w: the token's device claim is empty or not a string", errForbidden)
			}
			req.Where, req.Params = "user_id = $1 AND device_id = $2", []string{id.UserID, device}
		}
	case r.Where != "":
		for _, p := range r.Params {
			v, ok := claimValue(id, a, p)
			if !ok {
				return nil, nil, fmt.Errorf("%w: the token lacks claim %q", errForbidden, p)
			}
			req.Params = append(req.Params, v)
		}
	}
	cols := r.columns
	if q.columns != nil {
		if len(r.columns) > 0 {
			for _, c := range q.columns {
				if !r.allowed[c] {
					return nil, nil, badRequest("columns", "column %s is not allowed for this shape", strconv.QuoteToASCII(c))
				}
			}
		}
		cols = q.columns
	}
	seen := map[string]bool{}
	for _, c := range cols {
		if !seen[c] {
			seen[c] = true
			req.Columns = append(req.Columns, c)
		}
	}

	out := url.Values{}
	for k, v := range q.position {
		out[k] = []string{v[0]}
	}
	out.Set("table", req.Table)
	if req.Where != "" {
		out.Set("where", req.Where)
	}
	for i, v := range req.Params {
		out.Set("params["+strconv.Itoa(i+1)+"]", v)
	}
	if len(req.Columns) > 0 {
		quoted := make([]string, len(req.Columns))
		for i, c := range req.Columns {
			quoted[i] = quoteIdent(c)
		}
		out.Set("columns", strings.Join(quoted, ","))
	}
	if r.Replica != "" {
		out.Set("replica", r.Replica)
	}
	if secret != "" {
		out.Set("secret", secret)
	}
	return out, req, nil
}
