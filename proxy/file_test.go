package proxy

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	testKeys(t)
	der, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	pemFile := filepath.Join(t.TempDir(), "ec.pub")
	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	env := map[string]string{
		"ELECTRIC_URL":    "http://electric:3000",
		"ELECTRIC_SECRET": "from-env",
		"MY_HS":           string(hmacKey),
		"JWT_PUBLIC_KEY":  string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})),
	}
	yml := `
upstream: http://ignored:1
allowed_origins: [https://app.test]
auth:
  algorithms: [RS256, ES256, HS256]
  public_keys: [{kid: ec, pem_file: ` + pemFile + `}]
  hmac_keys: [{kid: h1, secret_env: MY_HS}]
  issuer: https://issuer.test
  audience: [shapeseal]
  leeway: 30s
  claims: {tenants: app.orgs}
shapes:
  - {name: items, table: items, where: "tenant_id = ANY($1::text[])", params: [$tenants], roles: [reader], columns: [id, title], replica: full}
  - {name: keys, kind: tenant_keys}
limits: {requests_per_second: 5, burst: 10, max_live_per_user: 2, upstream_timeout: 2m}
`
	cfg, err := ParseConfig(strings.NewReader(yml), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != "http://electric:3000" || cfg.Secret != "from-env" || cfg.Auth.Leeway != 30*time.Second ||
		len(cfg.Auth.PublicKeys) != 2 || len(cfg.Auth.HMACKeys) != 1 || cfg.Auth.TenantsClaim != "app.orgs" ||
		len(cfg.Shapes) != 2 || cfg.Shapes[0].Replica != "full" || cfg.Limits.UpstreamTimeout != 2*time.Minute {
		t.Fatalf("config %+v", cfg)
	}
	if _, ok := cfg.Auth.PublicKeys[1].Key.(*rsa.PublicKey); !ok {
		t.Fatalf("JWT_PUBLIC_KEY: %T", cfg.Auth.PublicKeys[1].Key)
	}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{
		"unknown field":  "upstream: http://x\nwhere: true\n",
		"bad duration":   "auth: {leeway: soon}\n",
		"missing secret": "auth: {hmac_keys: [{secret_env: NOPE}]}\n",
		"bad pem":        "auth: {public_keys: [{pem: nope}]}\n",
	} {
		if _, err := ParseConfig(strings.NewReader(bad), func(string) string { return "" }); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
