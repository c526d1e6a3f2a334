package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/shapeseal/shapeseal/internal/proxycmd"
)

func init() {
	register(command{"proxy", "serve the authorizing proxy in front of Electric (--config FILE)", runProxy})
}

const proxyUsage = `usage: shapeseal proxy --config FILE [--listen ADDR] [-v] [--debug-listen ADDR]

Serves the key-sync proxy in front of Electric: it checks each request's
JWT, pins the shape the config's rule names and forwards it upstream. The
YAML config file takes its secrets from the environment: ELECTRIC_URL,
ELECTRIC_SECRET, JWT_SECRET, JWT_PUBLIC_KEY, JWKS_URL. It prints one line
"shapeseal proxy ready {json}", logs one JSON audit line per request to
stderr and serves until interrupted.

flags:
`

func runProxy(ctx context.Context, args []string) error {
	// The flags are checked here first, as proxycmd.Run defines them, so
	// that help and misuse behave as in the other commands.
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	config := fs.String("config", "", "YAML config file (see proxy.FileConfig); required")
	fs.String("listen", "127.0.0.1:3001", "address to listen on")
	fs.Bool("v", false, "log debug events")
	fs.String("debug-listen", "", "also serve Go's profiles (/debug/pprof/) on this address, apart from the proxy (for benchmarks; never expose it)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), proxyUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *config == "" {
		return usagef("--config FILE is required")
	}
	return explainProxyError(proxycmd.Run(ctx, args, os.Stdout, os.Stderr, os.Getenv), *config)
}

var hmacKeyIndex = regexp.MustCompile(`auth\.hmac_keys\[(\d+)\]: empty secret`)

// explainProxyError names the environment variable a secret was to come
// from when it is missing.
func explainProxyError(err error, config string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if m := hmacKeyIndex.FindStringSubmatch(msg); m != nil {
		var fc struct {
			Auth struct {
				HMACKeys []struct {
					SecretEnv string `yaml:"secret_env"`
				} `yaml:"hmac_keys"`
			} `yaml:"auth"`
		}
		i, _ := strconv.Atoi(m[1])
		if b, rerr := os.ReadFile(config); rerr == nil && yaml.Unmarshal(b, &fc) == nil && i < len(fc.Auth.HMACKeys) {
			if env := fc.Auth.HMACKeys[i].SecretEnv; env != "" {
				return fmt.Errorf("%w: %s names environment variable %s for its secret, which is not set: export %s=… (an HS256 secret of at least 32 bytes)", err, config, env, env)
			}
		}
		return err
	}
	if strings.Contains(msg, "Auth needs HMACKeys, PublicKeys or a JWKSURL") {
		return fmt.Errorf("%w: set JWT_SECRET (an HS256 secret), JWT_PUBLIC_KEY (PEM) or JWKS_URL, or list keys under auth in %s", err, config)
	}
	return err
}
