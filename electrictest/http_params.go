package electrictest

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The query parameters of a shape request, validated with Electric's
// rules and its error messages.

var paramsKey = regexp.MustCompile(`^params\[(.*)\]$`)

// shapeRequest is a validated GET /v1/shape request.
type shapeRequest struct {
	def    shapeDef
	offset Offset
	now    bool
	handle string
	live   bool
	sse    bool
	cursor string
}

// flag reads a boolean parameter: true when present and not "false".
func flag(q map[string][]string, name string) bool {
	v, ok := q[name]
	return ok && (len(v) == 0 || v[len(v)-1] != "false")
}

// lastValue is the last value of a query parameter, "" when absent.
func lastValue(q map[string][]string, k string) string {
	if v := q[k]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// parseDefinition validates the parameters that define a shape.
func parseDefinition(q map[string][]string, errs map[string][]string) shapeDef {
	var def shapeDef
	if t := lastValue(q, "table"); t == "" {
		errs["table"] = append(errs["table"], "can't be blank")
	} else if rel, err := ParseRelation(t); err != nil {
		errs["table"] = append(errs["table"], err.Error())
	} else {
		def.rel = rel
	}
	def.where = lastValue(q, "where")
	// As with Ecto's casts in Electric, an empty value is an absent one.
	if c := lastValue(q, "columns"); c != "" {
		cols, err := ParseColumns(c)
		if err != nil {
			errs["columns"] = append(errs["columns"], err.Error())
		} else {
			def.columns = cols
		}
	}
	if c := lastValue(q, "queryable_columns"); c != "" {
		cols, err := ParseColumns(c)
		if err != nil {
			errs["queryable_columns"] = append(errs["queryable_columns"], err.Error())
		} else {
			def.queryable = cols
		}
	}
	switch def.replica = lastValue(q, "replica"); def.replica {
	case "":
		def.replica = "default"
	case "default", "full":
	default:
		errs["replica"] = append(errs["replica"], "is invalid")
	}
	switch lastValue(q, "log") {
	case "", "full":
	case "changes_only":
		def.changesOnly = true
	default:
		errs["log"] = append(errs["log"], "is invalid")
	}
	rejectSubset(q, errs)
	def.params = parseParams(q, def.where, errs)
	return def
}

// rejectSubset reports a subset snapshot request, which electrictest does
// not serve. Only subset__* and subset[...] (Plug's "subset" map) make one;
// any other unknown parameter is ignored.
func rejectSubset(q map[string][]string, errs map[string][]string) {
	for k := range q {
		if k == "subset" || strings.HasPrefix(k, "subset__") || strings.HasPrefix(k, "subset[") {
			errs["subset"] = append(errs["subset"], "subset snapshots are not supported by electrictest")
		}
	}
}

// parseParams validates the params[n] parameters of a where clause and
// returns the values of $1..$n.
func parseParams(q map[string][]string, where string, errs map[string][]string) []string {
	// Plug decodes params[k]=v into a map of k to v, which Ecto casts to a
	// map of strings: params=v (a string), params[]=v (a list) and
	// params[k][j]=v (a nested map) fail that cast whatever the rest of
	// the request says.
	invalid := false
	if _, ok := q["params"]; ok {
		invalid = true
	}
	// Electric's Shape.Validators.validate_parameters reads each key with
	// Elixir's Integer.parse, which takes a sign and leading zeros: "01"
	// and "+1" are the number 1. The sorted numbers must be exactly 1..n.
	// The where clause then looks $n up under the key "n" alone, so a value
	// given as params[01] passes the check but never reaches $1.
	var numbers []int
	byKey := map[string]string{}
	badKey := false
	for k, v := range q {
		m := paramsKey.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		if m[1] == "" || strings.Contains(m[1], "][") {
			invalid = true
			continue
		}
		n, ok := elixirInteger(m[1])
		if !ok {
			badKey = true
			continue
		}
		numbers = append(numbers, n)
		byKey[m[1]] = v[len(v)-1]
	}
	if invalid {
		errs["params"] = append(errs["params"], "is invalid")
		return nil
	}
	// Electric checks the params (Shape.Validators) only for a where clause.
	if where == "" {
		return nil
	}
	if badKey {
		errs["params"] = append(errs["params"], "Parameters can only use numbers as keys")
		return nil
	}
	slices.Sort(numbers)
	for i, n := range numbers {
		if n != i+1 {
			errs["params"] = append(errs["params"], "Parameters must be numbered sequentially, starting from 1")
			return nil
		}
	}
	// $1..$n in order, up to the first one given under another spelling:
	// from there the where clause reports "parameter $i was not provided"
	// when it uses $i.
	var params []string
	for i := 1; i <= len(numbers); i++ {
		v, ok := byKey[strconv.Itoa(i)]
		if !ok {
			break
		}
		params = append(params, v)
	}
	return params
}

// elixirInteger parses s as Elixir's Integer.parse/1 does when it consumes
// the whole string: an optional + or -, then ASCII digits. Numbers too large
// for an int are reported as -1, which is never a valid parameter number.
func elixirInteger(s string) (int, bool) {
	digits := strings.TrimLeft(s, "+-")
	if len(s)-len(digits) > 1 || digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || s[0] == '-' && n != 0 {
		return -1, true
	}
	return n, true
}

// parseShapeRequest validates a GET /v1/shape request: the shape's
// definition and where to read its log from.
func parseShapeRequest(q map[string][]string) (shapeRequest, map[string][]string) {
	errs := map[string][]string{}
	req := shapeRequest{def: parseDefinition(q, errs)}
	switch off := lastValue(q, "offset"); off {
	case "":
		errs["offset"] = append(errs["offset"], "can't be blank")
	case "now":
		req.now = true
	default:
		o, err := ParseOffset(off)
		if err != nil {
			errs["offset"] = append(errs["offset"], err.Error())
		}
		req.offset = o
	}
	req.live = flag(q, "live")
	req.sse = flag(q, "live_sse") || (q["live_sse"] == nil && flag(q, "experimental_live_sse"))
	req.cursor = lastValue(q, "cursor")
	if !req.now && !req.offset.IsBeforeAll() && len(errs["offset"]) == 0 {
		req.handle = lastValue(q, "handle")
		if req.handle == "" {
			errs["handle"] = append(errs["handle"], "can't be blank when offset != -1")
		}
	}
	if req.now && req.live {
		errs["live"] = append(errs["live"], "can't be true when offset is 'now'")
	}
	if req.live && req.offset.IsBeforeAll() && len(errs["offset"]) == 0 && !req.now {
		errs["live"] = append(errs["live"], "can't be true when offset == -1")
	}
	if req.sse && !req.live {
		errs["live_sse"] = append(errs["live_sse"], "can't be true unless live is also true")
	}
	return req, errs
}
