package proxy

import "testing"

// TestExampleConfig keeps testdata/example.yaml (the documented sample for
// `shapeseal proxy --config`) loadable and accepted by New.
func TestExampleConfig(t *testing.T) {
	env := map[string]string{"ELECTRIC_URL": "http://127.0.0.1:1", "ELECTRIC_SECRET": "s", "JWT_SECRET": "0123456789abcdef0123456789abcdef"}
	cfg, err := LoadConfig("testdata/example.yaml", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != env["ELECTRIC_URL"] || cfg.Secret != "s" || len(cfg.Auth.HMACKeys) != 1 || len(cfg.Shapes) != 2 {
		t.Fatalf("config %+v", cfg)
	}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
}
