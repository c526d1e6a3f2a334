package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/shapeseal/shapeseal/internal/pgident"
)

// requestError is a request the proxy refuses before anything reaches
// upstream; it is answered with Status and a JSON body
// {"message": ..., "errors": {Field: [Msg]}}.
type requestError struct {
	Status int
	Field  string
	Msg    string
}

func (e *requestError) Error() string { return e.Field + ": " + e.Msg }

func badRequest(field, format string, args ...any) *requestError {
	return &requestError{Status: 400, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// identError is an identifier the proxy refuses. Its message names what
// is wrong without repeating the client's text.
type identError struct{ kind pgident.Kind }

func (e *identError) Error() string { return e.kind.String() }

// parseIdent parses one identifier with Electric's (Postgres') rules (see
// internal/pgident), and also refuses a name over 63 bytes: Postgres would
// truncate it, so it cannot name a column of a rule.
func parseIdent(s string) (string, error) {
	id, err := pgident.Parse(s)
	var pe *pgident.Error
	if errors.As(err, &pe) {
		return "", &identError{pe.Kind}
	}
	if err != nil {
		return "", err
	}
	if len(id) > pgident.MaxLen {
		return "", &identError{pgident.TooLong}
	}
	return id, nil
}

// splitOutsideQuotes splits s on sep outside double quotes.
func splitOutsideQuotes(s string, sep byte) []string { return pgident.Split(s, sep) }

// parseColumns parses a columns list into canonical names.
func parseColumns(s string) ([]string, error) {
	var out []string
	for _, p := range pgident.Split(s, ',') {
		id, err := parseIdent(p)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

func quoteIdent(s string) string { return pgident.Quote(s) }

// Client query parameters: each names the validator of its value. Nothing
// else is accepted. (Hand-written rather than regexps: a regexp with a
// {1,128} repetition compiles to a program of its own size, and nine of
// them cost every process half a megabyte at start.)
var positionParams = map[string]func(string) bool{
	"offset":                validOffset,
	"handle":                validToken,
	"live":                  validFlag,
	"cursor":                validCursor,
	"live_sse":              validFlag,
	"experimental_live_sse": validFlag,
	"expired_handle":        validToken,
	"cache-buster":          validToken,
	"log":                   validLog,
}

// validOffset accepts -1, now, and TX_OP with 1–20 digits each, or TX_inf.
func validOffset(s string) bool {
	if s == "-1" || s == "now" {
		return true
	}
	tx, op, ok := strings.Cut(s, "_")
	return ok && allIn(tx, 1, 20, isDigit) && (op == "inf" || allIn(op, 1, 20, isDigit))
}

// validToken accepts a handle or cache-buster: 1–128 of A–Z a–z 0–9 _ . : -
func validToken(s string) bool {
	return allIn(s, 1, 128, func(c byte) bool { return isAlnum(c) || c == '_' || c == '.' || c == ':' || c == '-' })
}

// validCursor accepts 0–20 digits (the Go client sends an empty cursor).
func validCursor(s string) bool { return allIn(s, 0, 20, isDigit) }

func validFlag(s string) bool { return s == "true" || s == "false" }

func validLog(s string) bool { return s == "full" || s == "changes_only" }

// allIn reports whether s has min to max bytes, each accepted by ok.
func allIn(s string, min, max int, ok func(byte) bool) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := range len(s) {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isAlnum(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// clientQuery is a validated client query.
type clientQuery struct {
	position url.Values // validated position parameters
	columns  []string   // canonical names, nil if not given
}

func (q *clientQuery) live() bool { return q.position.Get("live") == "true" }

// parseClientQuery validates a raw query string. Keys are compared
// byte-for-byte before any decoding, so an encoded key ("%74able") is an
// unknown key; values are percent-decoded once and must match their
// parameter's pattern.
func parseClientQuery(raw string) (*clientQuery, error) {
	q := &clientQuery{position: url.Values{}}
	if raw == "" {
		return nil, badRequest("offset", "is required")
	}
	if len(raw) > 8<<10 {
		return nil, badRequest("query", "too long")
	}
	seen := map[string]bool{}
	for _, pair := range strings.Split(raw, "&") {
		key, val, hasEq := strings.Cut(pair, "=")
		if key == "" {
			return nil, badRequest("query", "empty parameter")
		}
		if seen[key] {
			return nil, badRequest(safeKey(key), "given more than once")
		}
		seen[key] = true
		valid, isPos := positionParams[key]
		if !isPos && key != "columns" {
			return nil, badRequest(safeKey(key), "is not allowed: the proxy defines the shape; only offset, handle, live, cursor, live_sse, expired_handle, cache-buster, log and columns may be sent")
		}
		if !hasEq {
			return nil, badRequest(key, "needs a value")
		}
		v, err := url.QueryUnescape(val)
		if err != nil {
			return nil, badRequest(key, "is not properly encoded")
		}
		if key == "columns" {
			cols, err := parseColumns(v)
			if err != nil {
				return nil, badRequest("columns", "%s", err)
			}
			q.columns = cols
			continue
		}
		if !valid(v) {
			return nil, badRequest(key, "has invalid format")
		}
		q.position.Set(key, v)
	}
	off := q.position.Get("offset")
	switch {
	case off == "":
		return nil, badRequest("offset", "is required")
	case off != "-1" && off != "now" && q.position.Get("handle") == "":
		return nil, badRequest("handle", "is required with this offset")
	case off == "now" && q.live():
		return nil, badRequest("live", "is not allowed with offset=now")
	}
	return q, nil
}

// safeKey renders a client's parameter name for an error message.
func safeKey(k string) string {
	if len(k) > 40 {
		k = k[:40]
	}
	return strconv.QuoteToASCII(k)
}

// reParam finds $n placeholders in a where template.
var reParam = regexp.MustCompile(`\$([0-9]+)`)
