package client

import (
	"database/sql"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

var (
	scannerType   = reflect.TypeFor[sql.Scanner]()
	unmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
	timeType      = reflect.TypeFor[time.Time]()
	rawType       = reflect.TypeFor[json.RawMessage]()
	bytesType     = reflect.TypeFor[[]byte]()
)

// class is how Options.Parse treats a Postgres type.
type class int

const (
	classText class = iota
	classInt
	classFloat
	classNumeric
	classBool
	classJSON
	classTime
	classBytea
)

func classOf(typ string) class {
	switch typ {
	case "int2", "int4", "int8":
		return classInt
	case "float4", "float8":
		return classFloat
	case "numeric":
		return classNumeric
	case "bool":
		return classBool
	case "json", "jsonb":
		return classJSON
	case "timestamp", "timestamptz", "date":
		return classTime
	case "bytea":
		return classBytea
	}
	return classText
}

func mismatch(unsafe.Pointer, string) error { return ErrFieldType }

// makeNull returns what NULL does to a field of type t.
func makeNull(t reflect.Type) func(unsafe.Pointer) error {
	switch {
	case reflect.PointerTo(t).Implements(scannerType):
		return func(p unsafe.Pointer) error {
			return reflect.NewAt(t, p).Interface().(sql.Scanner).Scan(nil)
		}
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
		return func(p unsafe.Pointer) error {
			reflect.NewAt(t, p).Elem().SetZero()
			return nil
		}
	}
	return func(unsafe.Pointer) error { return ErrNullField }
}

// makeSetter returns how the Postgres text of a column (col, if known)
// goes into a field of type t; dim counts array levels already entered.
func makeSetter(t reflect.Type, col Column, known bool, dim int) setter {
	cl := classOf(col.Type)
	isArray := known && col.Dims > dim
	if !known {
		cl = -1
	}
	if set := typeSetter(t, col, known, dim, cl, isArray); set != nil {
		return set
	}
	if cl == classJSON && !isArray {
		switch t.Kind() {
		case reflect.String:
		case reflect.Slice:
			if t.Elem().Kind() != reflect.Uint8 {
				return jsonSetter(t)
			}
		case reflect.Interface:
		default:
			return jsonSetter(t)
		}
	}
	switch t.Kind() {
	case reflect.String:
		return func(p unsafe.Pointer, text string) error {
			*(*string)(p) = text
			return nil
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if isArray || known && cl != classInt && cl != classNumeric {
			return mismatch
		}
		return intSetter(t)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if isArray || known && cl != classInt && cl != classNumeric {
			return mismatch
		}
		return uintSetter(t)
	case reflect.Float32, reflect.Float64:
		if isArray || known && cl != classInt && cl != classFloat && cl != classNumeric {
			return mismatch
		}
		return floatSetter(t.Bits())
	case reflect.Bool:
		if isArray || known && cl != classBool {
			return mismatch
		}
		return setBool
	case reflect.Interface:
		if t.NumMethod() > 0 {
			return mismatch
		}
		conv := parsedConverter(col, known, dim)
		return func(p unsafe.Pointer, text string) error {
			v, err := conv(text)
			if err != nil {
				return err
			}
			*(*any)(p) = v
			return nil
		}
	case reflect.Pointer:
		return pointerSetter(t, col, known, dim)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 && !isArray {
			if cl == classBytea {
				return setBytea
			}
			return setBytes
		}
		if known && !isArray {
			return mismatch
		}
		return sliceSetter(t, col, known, dim)
	}
	return mismatch
}

// typeSetter returns the setter of a field type that says itself how it
// takes text, whatever its kind: time.Time, a sql.Scanner, json.RawMessage
// or an encoding.TextUnmarshaler. It returns nil for any other type. cl
// and isArray are makeSetter's (cl is -1 for an unknown column).
func typeSetter(t reflect.Type, col Column, known bool, dim int, cl class, isArray bool) setter {
	switch {
	case t == timeType:
		if isArray || known && cl != classTime && cl != classText {
			return mismatch
		}
		return func(p unsafe.Pointer, text string) error {
			tm, err := parseTime(text)
			*(*time.Time)(p) = tm
			return err
		}
	case reflect.PointerTo(t).Implements(scannerType):
		conv := converter(col, known, dim)
		return func(p unsafe.Pointer, text string) error {
			v, err := conv(text)
			if err != nil {
				return err
			}
			return reflect.NewAt(t, p).Interface().(sql.Scanner).Scan(v)
		}
	case t == rawType:
		if isArray || known && cl != classJSON {
			return mismatch
		}
		return func(p unsafe.Pointer, text string) error {
			if !json.Valid(unsafe.Slice(unsafe.StringData(text), len(text))) {
				return errors.New("invalid JSON")
			}
			*(*json.RawMessage)(p) = json.RawMessage(text)
			return nil
		}
	case t.Kind() != reflect.Interface && t.Kind() != reflect.Pointer && reflect.PointerTo(t).Implements(unmarshalType):
		return func(p unsafe.Pointer, text string) error {
			return reflect.NewAt(t, p).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(text))
		}
	}
	return nil
}

// pointerSetter sets a pointer field to a new value, which the setter of
// the element type sets.
func pointerSetter(t reflect.Type, col Column, known bool, dim int) setter {
	elem := makeSetter(t.Elem(), col, known, dim)
	et := t.Elem()
	return func(p unsafe.Pointer, text string) error {
		v := reflect.New(et)
		if err := elem(v.UnsafePointer(), text); err != nil {
			return err
		}
		*(*unsafe.Pointer)(p) = v.UnsafePointer()
		return nil
	}
}

// floatSetter sets a float field of the given bits.
func floatSetter(bits int) setter {
	return func(p unsafe.Pointer, text string) error {
		f, err := strconv.ParseFloat(text, bits)
		if bits == 32 {
			*(*float32)(p) = float32(f)
		} else {
			*(*float64)(p) = f
		}
		return err
	}
}

// setBool sets a bool field from "t"/"f" (or "true"/"false").
func setBool(p unsafe.Pointer, text string) error {
	switch text {
	case "t", "true":
		*(*bool)(p) = true
	case "f", "false":
		*(*bool)(p) = false
	default:
		return errors.New("not a boolean")
	}
	return nil
}

// setBytea sets a []byte field from bytea's \x hex text.
func setBytea(p unsafe.Pointer, text string) error {
	h, ok := strings.CutPrefix(text, `\x`)
	if !ok {
		return errors.New("not bytea hex text")
	}
	b, err := hex.DecodeString(h)
	*(*[]byte)(p) = b
	return err
}

// setBytes sets a []byte field to a copy of the text.
func setBytes(p unsafe.Pointer, text string) error {
	*(*[]byte)(p) = []byte(text)
	return nil
}

func jsonSetter(t reflect.Type) setter {
	return func(p unsafe.Pointer, text string) error {
		v := reflect.NewAt(t, p)
		v.Elem().SetZero()
		return json.Unmarshal([]byte(text), v.Interface())
	}
}

func intSetter(t reflect.Type) setter {
	bits := t.Bits()
	switch t.Kind() {
	case reflect.Int64:
		return func(p unsafe.Pointer, text string) error {
			n, err := strconv.ParseInt(text, 10, 64)
			*(*int64)(p) = n
			return err
		}
	case reflect.Int32:
		return func(p unsafe.Pointer, text string) error {
			n, err := strconv.ParseInt(text, 10, 32)
			*(*int32)(p) = int32(n)
			return err
		}
	case reflect.Int:
		return func(p unsafe.Pointer, text string) error {
			n, err := strconv.ParseInt(text, 10, bits)
			*(*int)(p) = int(n)
			return err
		}
	}
	return func(p unsafe.Pointer, text string) error {
		n, err := strconv.ParseInt(text, 10, bits)
		reflect.NewAt(t, p).Elem().SetInt(n)
		return err
	}
}

func uintSetter(t reflect.Type) setter {
	bits := t.Bits()
	return func(p unsafe.Pointer, text string) error {
		n, err := strconv.ParseUint(text, 10, bits)
		reflect.NewAt(t, p).Elem().SetUint(n)
		return err
	}
}

// converter returns the value a sql.Scanner gets for a column's text.
func converter(col Column, known bool, dim int) func(string) (any, error) {
	if known && col.Dims > dim {
		return func(text string) (any, error) { return text, nil }
	}
	switch classOf(col.Type) {
	case classInt:
		return func(text string) (any, error) { return strconv.ParseInt(text, 10, 64) }
	case classFloat:
		return func(text string) (any, error) { return strconv.ParseFloat(text, 64) }
	case classBool:
		return func(text string) (any, error) { return parseBool(text, col) }
	case classTime:
		return func(text string) (any, error) { return parseTime(text) }
	case classJSON:
		return func(text string) (any, error) { return []byte(text), nil }
	}
	return func(text string) (any, error) { return text, nil }
}

// parsedConverter returns the value Options.Parse makes of a column's text.
func parsedConverter(col Column, known bool, dim int) func(string) (any, error) {
	if !known {
		return func(text string) (any, error) { return text, nil }
	}
	d := decoder{parser: DefaultParsers}
	col.Dims -= dim
	if col.Dims < 0 {
		col.Dims = 0
	}
	return func(text string) (any, error) { return d.parseValue(text, col) }
}

// assignValue sets v from a value a Transform or Options.Parse left in a
// row: a parsed value, or something else entirely.
func assignValue(v reflect.Value, x any) error {
	t := v.Type()
	if s, ok := v.Addr().Interface().(sql.Scanner); ok {
		return s.Scan(x)
	}
	xv := reflect.ValueOf(x)
	if xv.Type().AssignableTo(t) {
		v.Set(xv)
		return nil
	}
	switch x := x.(type) {
	case error:
		return x
	case int64:
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			if v.OverflowInt(x) {
				return strconv.ErrRange
			}
			v.SetInt(x)
			return nil
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if x < 0 || v.OverflowUint(uint64(x)) {
				return strconv.ErrRange
			}
			v.SetUint(uint64(x))
			return nil
		case reflect.Float32, reflect.Float64:
			v.SetFloat(float64(x))
			return nil
		case reflect.String:
			v.SetString(strconv.FormatInt(x, 10))
			return nil
		}
	case float64:
		switch t.Kind() {
		case reflect.Float32, reflect.Float64:
			v.SetFloat(x)
			return nil
		case reflect.String:
			v.SetString(strconv.FormatFloat(x, 'g', -1, 64))
			return nil
		}
	case bool:
		if t.Kind() == reflect.String {
			v.SetString(strconv.FormatBool(x))
			return nil
		}
	case json.RawMessage:
		switch {
		case t.Kind() == reflect.String:
			v.SetString(string(x))
			return nil
		case t == bytesType:
			v.SetBytes(x)
			return nil
		}
		v.SetZero()
		return json.Unmarshal(x, v.Addr().Interface())
	case []any:
		if t.Kind() == reflect.Slice {
			return assignSlice(v, x)
		}
	}
	if t.Kind() == reflect.Pointer {
		e := reflect.New(t.Elem())
		if err := assignValue(e.Elem(), x); err != nil {
			return err
		}
		v.Set(e)
		return nil
	}
	return ErrFieldType
}

// assignSlice sets the slice v from an array Options.Parse made, element
// by element as assignValue sets them.
func assignSlice(v reflect.Value, x []any) error {
	t := v.Type()
	s := reflect.MakeSlice(t, len(x), len(x))
	for i, el := range x {
		if el == nil {
			if k := t.Elem().Kind(); k != reflect.Pointer && k != reflect.Interface && k != reflect.Slice && k != reflect.Map {
				return ErrNullField
			}
			continue
		}
		if err := assignValue(s.Index(i), el); err != nil {
			return err
		}
	}
	v.Set(s)
	return nil
}

// parseTime parses a timestamp, timestamptz or date in Postgres's default
// text output (DateStyle ISO).
func parseTime(text string) (time.Time, error) {
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, text); err == nil {
			return t, nil
		}
	}
	switch text {
	case "infinity", "-infinity":
		return time.Time{}, errors.New("infinite time")
	}
	return time.Time{}, errors.New("not a Postgres timestamp or date")
}

var timeLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07:00:00",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02",
}
