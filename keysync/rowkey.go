package keysync

import "strings"

// An Electric row key names a row by its relation and primary key:
//
//	"public"."items"/"42"
//	"public"."items"/"acme"/"42"
//
// with each part quoted, and a slash inside a part doubled. The decrypter
// reads a row's row key from its Electric key when the two agree (see
// rowPlaces).

// keyTable returns the table part of an Electric row key, the quoted
// schema and table and the slash, `"public"."items"/` of
// `"public"."items"/"42"` (a quote in a name is doubled); "" if key does
// not start so.
func keyTable(key string) string {
	i := 0
	for _, end := range []byte{'.', '/'} {
		if i >= len(key) || key[i] != '"' {
			return ""
		}
		for i++; ; i++ {
			j := strings.IndexByte(key[i:], '"')
			if j < 0 {
				return ""
			}
			i += j + 1
			if i >= len(key) || key[i] != '"' {
				break // the closing quote; a doubled one is part of the name
			}
		}
		if i >= len(key) || key[i] != end {
			return ""
		}
		i++
	}
	return key[:i]
}

// keyHolds reports whether the Electric row key key holds exactly the n
// values of rowKey (joined with NUL bytes, as in a place), in order.
func keyHolds(key, rowKey string, n int) bool {
	t := keyTable(key)
	if t == "" {
		return false
	}
	rest := key[len(t):]
	for i := range n {
		v := rowKeyValue(rowKey, i)
		if i > 0 {
			if rest == "" || rest[0] != '/' {
				return false
			}
			rest = rest[1:]
		}
		if rest == "" || rest[0] != '"' {
			return false
		}
		rest = rest[1:]
		for len(v) > 0 {
			j := strings.IndexByte(v, '/')
			if j < 0 {
				j = len(v)
			}
			if !strings.HasPrefix(rest, v[:j]) {
				return false
			}
			rest, v = rest[j:], v[j:]
			if v != "" { // a slash, doubled in the key
				if !strings.HasPrefix(rest, "//") {
					return false
				}
				rest, v = rest[2:], v[1:]
			}
		}
		if rest == "" || rest[0] != '"' {
			return false
		}
		rest = rest[1:]
	}
	return rest == ""
}

// keyRowKey returns the n values of the Electric row key key, joined with
// NUL bytes as in a place, if it holds n quoted values.
func keyRowKey(key string, n int) (string, bool) {
	t := keyTable(key)
	if t == "" {
		return "", false
	}
	rest := key[len(t):]
	var b strings.Builder
	for i := range n {
		if i > 0 {
			if rest == "" || rest[0] != '/' {
				return "", false
			}
			rest = rest[1:]
			b.WriteByte(0)
		}
		if rest == "" || rest[0] != '"' {
			return "", false
		}
		rest = rest[1:]
		// The value ends at the first quote followed by a single slash or
		// by the end of the key.
		for {
			j := strings.IndexAny(rest, `"/`)
			if j < 0 {
				return "", false
			}
			b.WriteString(rest[:j])
			c := rest[j]
			rest = rest[j+1:]
			if c == '/' {
				if rest == "" || rest[0] != '/' {
					return "", false
				}
				b.WriteByte('/')
				rest = rest[1:]
				continue
			}
			if rest == "" || rest[0] == '/' && !strings.HasPrefix(rest, "//") {
				break
			}
			b.WriteByte('"')
		}
	}
	if rest != "" {
		return "", false
	}
	return b.String(), true
}
