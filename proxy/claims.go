package proxy

import (
	"encoding/json"
	"strings"
)

// Claims are the verified claims of a token: JSON values, with numbers as
// json.Number.
type Claims map[string]any

// Identity is what the proxy learnt from a verified token. The proxy
// shares it between the requests of a token: read it, never modify it.
type Identity struct {
	UserID   string
	DeviceID string
	Roles    []string
	Tenants  []string
	Claims   Claims
}

// numClaim reads a numeric claim; ok is false when it is absent, and a
// claim that is not a number is errClaims.
func numClaim(c Claims, name string) (float64, bool, error) {
	raw, ok := c[name]
	if !ok {
		return 0, false, nil
	}
	n, isNum := raw.(json.Number)
	if !isNum {
		return 0, true, errClaims
	}
	f, err := n.Float64()
	if err != nil {
		return 0, true, errClaims
	}
	return f, true, nil
}

// checkClaims checks the registered claims: exp (required), nbf and iat
// with the leeway, and the issuer and audience when configured.
func (v *verifier) checkClaims(c Claims) error {
	now := float64(v.now().UnixNano()) / 1e9
	leeway := v.cfg.Leeway.Seconds()
	exp, ok, err := numClaim(c, "exp")
	if err != nil {
		return err
	}
	if !ok {
		return errClaims // exp is required
	}
	if now > exp+leeway {
		return errExpired
	}
	if nbf, ok, err := numClaim(c, "nbf"); err != nil {
		return err
	} else if ok && now+leeway < nbf {
		return errNotYetValid
	}
	if iat, ok, err := numClaim(c, "iat"); err != nil {
		return err
	} else if ok && now+leeway < iat {
		return errNotYetValid
	}
	if v.cfg.Issuer != "" {
		iss, _ := c["iss"].(string)
		if iss != v.cfg.Issuer {
			return errIssuer
		}
	}
	if len(v.cfg.Audience) > 0 {
		var auds []string
		switch a := c["aud"].(type) {
		case string:
			auds = []string{a}
		case []any:
			for _, x := range a {
				if s, ok := x.(string); ok {
					auds = append(auds, s)
				}
			}
		}
		found := false
		for _, want := range v.cfg.Audience {
			for _, got := range auds {
				if got == want {
					found = true
				}
			}
		}
		if !found {
			return errAudience
		}
	}
	return nil
}

// lookup finds a claim by path: an exact top-level key first, then a
// dot-separated path through nested objects.
func lookup(c Claims, path string) (any, bool) {
	if v, ok := c[path]; ok {
		return v, true
	}
	var cur any = map[string]any(c)
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// scalarString renders a string, number or boolean claim.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		if x {
			return "true", true
		}
		return "false", true
	}
	return "", false
}

// stringList reads a claim that is a list of scalars, or one scalar (a
// space-separated string is split, as OAuth scope claims are).
func stringList(v any) ([]string, bool) {
	switch x := v.(type) {
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := scalarString(e)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	case string:
		return strings.Fields(x), true
	}
	if s, ok := scalarString(v); ok {
		return []string{s}, true
	}
	return nil, false
}

// identity reads the user, device, roles and tenants claims (at the paths
// AuthConfig names, or sub, device_id, roles, tenant_ids); a user is
// required.
func (v *verifier) identity(c Claims) (*Identity, error) {
	id := &Identity{Claims: c}
	raw, ok := lookup(c, v.cfg.claim(v.cfg.UserClaim, "sub"))
	if !ok {
		return nil, errClaims
	}
	if id.UserID, ok = scalarString(raw); !ok || id.UserID == "" {
		return nil, errClaims
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.DeviceClaim, "device_id")); ok {
		if id.DeviceID, ok = scalarString(raw); !ok {
			return nil, errClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.RolesClaim, "roles")); ok {
		if id.Roles, ok = stringList(raw); !ok {
			return nil, errClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.TenantsClaim, "tenant_ids")); ok {
		if id.Tenants, ok = stringList(raw); !ok {
			return nil, errClaims
		}
	}
	return id, nil
}
