package proxy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// fileConfig is the YAML form of Config (documented on LoadConfig).
type fileConfig struct {
	Upstream       string      `yaml:"upstream"`
	Secret         string      `yaml:"secret"`
	AllowedOrigins []string    `yaml:"allowed_origins"`
	MetricsListen  string      `yaml:"metrics_listen"`
	Auth           fileAuth    `yaml:"auth"`
	Shapes         []fileShape `yaml:"shapes"`
	Limits         fileLimits  `yaml:"limits"`
}

// LoadConfig reads a YAML config file and the environment (getenv; nil
// means os.Getenv). The Config it returns still needs a Logger (and any
// Authorize hook), and goes to New. The file reads:
//
//	upstream: http://electric:3000        # or $ELECTRIC_URL
//	# secret comes from $ELECTRIC_SECRET
//	allowed_origins: [https://app.example]
//	metrics_listen: 127.0.0.1:9090        # /metrics apart from the proxy (Config.MetricsListen)
//	auth:
//	  algorithms: [RS256, ES256]
//	  jwks_url: https://idp.example/.well-known/jwks.json
//	  public_keys: [{kid: k1, pem_file: /etc/shapeseal/jwt.pub}]
//	  hmac_keys: [{kid: h1, secret_env: JWT_SECRET}]
//	  issuer: https://idp.example/
//	  audience: [shapeseal]
//	  leeway: 30s
//	  claims: {user: sub, roles: roles, tenants: tenant_ids, device: device_id}
//	shapes:
//	  - {name: items, table: items, where: "tenant_id = ANY($1::text[])", params: [$tenants],
//	     roles: [member], columns: [id, tenant_id, title], replica: full}
//	  - {name: keys, kind: tenant_keys}
//	limits: {requests_per_second: 20, burst: 100, max_live_per_user: 32, upstream_timeout: 5m}
//
// Unknown fields are errors. Secrets belong in the environment:
// ELECTRIC_URL and ELECTRIC_SECRET override upstream and secret,
// JWT_SECRET adds an HMAC key (unless a hmac_keys entry already reads it
// with secret_env), JWT_PUBLIC_KEY a PEM public key and
// JWKS_URL sets jwks_url.
func LoadConfig(path string, getenv func(string) string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, err
	}
	defer f.Close()
	return ParseConfig(f, getenv)
}

type fileAuth struct {
	Algorithms []string `yaml:"algorithms"`
	HMACKeys   []struct {
		ID        string `yaml:"kid"`
		Secret    string `yaml:"secret"`
		SecretEnv string `yaml:"secret_env"`
	} `yaml:"hmac_keys"`
	PublicKeys []struct {
		ID      string `yaml:"kid"`
		PEM     string `yaml:"pem"`
		PEMFile string `yaml:"pem_file"`
	} `yaml:"public_keys"`
	JWKSURL                string   `yaml:"jwks_url"`
	JWKSTimeout            duration `yaml:"jwks_timeout"`
	JWKSMaxAge             duration `yaml:"jwks_max_age"`
	JWKSMinRefreshInterval duration `yaml:"jwks_min_refresh_interval"`
	Issuer                 string   `yaml:"issuer"`
	Audience               []string `yaml:"audience"`
	Leeway                 duration `yaml:"leeway"`
	Claims                 struct {
		User    string `yaml:"user"`
		Roles   string `yaml:"roles"`
		Tenants string `yaml:"tenants"`
		Device  string `yaml:"device"`
	} `yaml:"claims"`
}

type fileShape struct {
	Name    string   `yaml:"name"`
	Kind    string   `yaml:"kind"`
	Table   string   `yaml:"table"`
	Where   string   `yaml:"where"`
	Params  []string `yaml:"params"`
	Roles   []string `yaml:"roles"`
	Columns []string `yaml:"columns"`
	Replica string   `yaml:"replica"`
	Cache   string   `yaml:"cache"`
}

type fileLimits struct {
	RequestsPerSecond float64  `yaml:"requests_per_second"`
	Burst             int      `yaml:"burst"`
	MaxLivePerUser    int      `yaml:"max_live_per_user"`
	UpstreamTimeout   duration `yaml:"upstream_timeout"`
}

// duration reads "30s", "5m".
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*d = duration(v)
	return nil
}

// ParseConfig is LoadConfig from a reader.
func ParseConfig(r io.Reader, getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var fc fileConfig
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("proxy config: %w", err)
	}
	cfg := Config{Upstream: fc.Upstream, Secret: fc.Secret, AllowedOrigins: fc.AllowedOrigins, MetricsListen: fc.MetricsListen}
	if v := getenv("ELECTRIC_URL"); v != "" {
		cfg.Upstream = v
	}
	if v := getenv("ELECTRIC_SECRET"); v != "" {
		cfg.Secret = v
	}
	a := fc.Auth
	cfg.Auth = AuthConfig{Algorithms: a.Algorithms, JWKSURL: a.JWKSURL, JWKSTimeout: time.Duration(a.JWKSTimeout),
		JWKSMaxAge: time.Duration(a.JWKSMaxAge), JWKSMinRefreshInterval: time.Duration(a.JWKSMinRefreshInterval),
		Issuer: a.Issuer, Audience: a.Audience, Leeway: time.Duration(a.Leeway),
		UserClaim: a.Claims.User, RolesClaim: a.Claims.Roles, TenantsClaim: a.Claims.Tenants, DeviceClaim: a.Claims.Device}
	if v := getenv("JWKS_URL"); v != "" {
		cfg.Auth.JWKSURL = v
	}
	jwtSecretUsed := false
	for i, k := range a.HMACKeys {
		s := k.Secret
		if k.SecretEnv != "" {
			jwtSecretUsed = jwtSecretUsed || k.SecretEnv == "JWT_SECRET"
			s = getenv(k.SecretEnv)
		}
		if s == "" {
			return Config{}, fmt.Errorf("proxy config: auth.hmac_keys[%d]: empty secret", i)
		}
		cfg.Auth.HMACKeys = append(cfg.Auth.HMACKeys, HMACKey{ID: k.ID, Secret: []byte(s)})
	}
	if s := getenv("JWT_SECRET"); s != "" && !jwtSecretUsed { // not twice when a key names it
		cfg.Auth.HMACKeys = append(cfg.Auth.HMACKeys, HMACKey{Secret: []byte(s)})
	}
	for i, k := range a.PublicKeys {
		data := []byte(k.PEM)
		if k.PEMFile != "" {
			var err error
			if data, err = os.ReadFile(k.PEMFile); err != nil {
				return Config{}, fmt.Errorf("proxy config: auth.public_keys[%d]: %w", i, err)
			}
		}
		pub, err := parsePublicKeyPEM(data)
		if err != nil {
			return Config{}, fmt.Errorf("proxy config: auth.public_keys[%d]: %w", i, err)
		}
		cfg.Auth.PublicKeys = append(cfg.Auth.PublicKeys, PublicKey{ID: k.ID, Key: pub})
	}
	if s := getenv("JWT_PUBLIC_KEY"); s != "" {
		pub, err := parsePublicKeyPEM([]byte(s))
		if err != nil {
			return Config{}, fmt.Errorf("proxy config: JWT_PUBLIC_KEY: %w", err)
		}
		cfg.Auth.PublicKeys = append(cfg.Auth.PublicKeys, PublicKey{Key: pub})
	}
	for _, s := range fc.Shapes {
		cfg.Shapes = append(cfg.Shapes, ShapeRule(s))
	}
	l := fc.Limits
	cfg.Limits = Limits{RequestsPerSecond: l.RequestsPerSecond, Burst: l.Burst, MaxLivePerUser: l.MaxLivePerUser,
		UpstreamTimeout: time.Duration(l.UpstreamTimeout)}
	return cfg, nil
}

// parsePublicKeyPEM reads a PUBLIC KEY (PKIX) or CERTIFICATE block.
func parsePublicKeyPEM(data []byte) (any, error) {
	block, _ := pem.Decode(bytes.TrimSpace(data))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	}
	return nil, fmt.Errorf("unsupported PEM block %q (want PUBLIC KEY or CERTIFICATE)", block.Type)
}
