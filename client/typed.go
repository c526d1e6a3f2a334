package client

import (
	"database/sql"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// ErrNullField means a column is NULL and its struct field cannot hold
// NULL: use a pointer, a sql.Null* (any sql.Scanner), a slice, a map or an
// interface field for nullable columns.
var ErrNullField = errors.New("NULL into a field that cannot hold it")

// ErrFieldType means a column's type does not fit its struct field's type
// (text into an int, say).
var ErrFieldType = errors.New("column type does not fit the field")

// A FieldError reports a column whose value could not be decoded into its
// struct field. It wraps [ErrNullField], [ErrFieldType], the conversion's
// error (strconv.ErrSyntax, strconv.ErrRange, a JSON or time error), or,
// when a Transform left a non-text value in the row (a decrypter's
// *keysync.CellError, say), that value if it is an error. It never holds
// the value itself, which may be plaintext.
type FieldError struct {
	Column string       // the column
	Type   string       // its Postgres type from the schema, "text[]" for arrays; "" if the schema does not name it
	Field  string       // the struct field, Type.Field
	GoType reflect.Type // the field's type
	Err    error
}

func (e *FieldError) Error() string {
	typ := e.Type
	if typ == "" {
		typ = "unknown type"
	}
	return fmt.Sprintf("client: column %q (%s) into %s (%s): %v", e.Column, typ, e.Field, e.GoType, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }

// A RowDecoder decodes rows into structs of type T, by column name. A
// field's column is named by its tag, `shape:"title"` (`shape:"-"` skips the
// field); an exported field without a tag takes the column whose name
// equals the field's, ignoring case. Fields of embedded structs count as
// the outer struct's. Columns without a field are ignored.
//
// Values are converted as Options.Parse converts them, by the column's
// Postgres type in the schema:
//   - int2, int4, int8: any integer field (range-checked), a float field;
//   - float4, float8 (and numeric): a float field (numeric into an integer
//     field too, when it holds an integer);
//   - bool: a bool field;
//   - json, jsonb: json.RawMessage, []byte or string, or any other type,
//     which json.Unmarshal fills;
//   - arrays: a slice of the element's field type, one level per
//     dimension (or []any, as Parse makes);
//   - timestamp, timestamptz, date: time.Time;
//   - bytea: []byte (decoded from \x hex);
//   - every type: string (the Postgres text), a type implementing
//     sql.Scanner (given the converted value: int64, float64, bool,
//     time.Time, []byte or string) or encoding.TextUnmarshaler, and an
//     interface field (given the value as Options.Parse makes it).
//
// NULL sets a pointer, slice, map or interface field to nil and calls a
// sql.Scanner with nil (sql.NullString and the like); into any other field
// it is an error. A pointer field to any of the types above takes the
// value. Without a schema entry for a column, the field's type decides.
//
// An error is a *[FieldError] naming the column and the field. Decoding
// an update (replica=default sends only the changed columns) into the
// row's previous value sets just those columns' fields.
//
// A RowDecoder is safe for concurrent use.
type RowDecoder[T any] struct {
	rt *rowType

	mu    sync.Mutex
	plans map[*byte]*planSet // by schema identity
}

// NewRowDecoder returns a decoder for T, which must be a struct type.
func NewRowDecoder[T any]() (*RowDecoder[T], error) {
	rt, err := rowTypeOf(reflect.TypeFor[T]())
	if err != nil {
		return nil, err
	}
	return &RowDecoder[T]{rt: rt}, nil
}

// Decode sets the fields of *dst from the columns of row, converted by
// schema (nil if unknown). Columns absent from row leave their fields as
// they are.
func (d *RowDecoder[T]) Decode(row Row, schema Schema, dst *T) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.planSet(schema).decodeRow(row, unsafe.Pointer(dst))
}

func (d *RowDecoder[T]) planSet(schema Schema) *planSet {
	id := schemaID(schema)
	if ps, ok := d.plans[id]; ok {
		return ps
	}
	if d.plans == nil || len(d.plans) > 16 {
		d.plans = map[*byte]*planSet{}
	}
	ps := newPlanSet(d.rt, schema)
	d.plans[id] = ps
	return ps
}

// schemaID identifies a schema map (schemas are never modified).
func schemaID(s Schema) *byte {
	if s == nil {
		return nil
	}
	return (*byte)(reflect.ValueOf(s).UnsafePointer())
}

// rowType is what reflection says of a struct type, once.
type rowType struct {
	typ    reflect.Type
	fields []*fieldInfo
	exact  map[string]*fieldInfo // by tag
	folded map[string]*fieldInfo // untagged, by lower-cased name
}

type fieldInfo struct {
	name   string // Type.Field
	offset uintptr
	typ    reflect.Type
	index  int // in rowType.fields
}

var rowTypes sync.Map // reflect.Type → *rowType

func rowTypeOf(t reflect.Type) (*rowType, error) {
	if v, ok := rowTypes.Load(t); ok {
		return v.(*rowType), nil
	}
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("client: rows decode into structs, not %s", t)
	}
	rt := &rowType{typ: t, exact: map[string]*fieldInfo{}, folded: map[string]*fieldInfo{}}
	var walk func(t reflect.Type, base uintptr, depth int)
	walk = func(t reflect.Type, base uintptr, depth int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag, hasTag := f.Tag.Lookup("shape")
			name, _, _ := strings.Cut(tag, ",")
			if name == "-" {
				continue
			}
			if f.Anonymous && !hasTag && f.Type.Kind() == reflect.Struct && depth < 10 {
				walk(f.Type, base+f.Offset, depth+1)
				continue
			}
			if !f.IsExported() {
				continue
			}
			fi := &fieldInfo{name: rt.typ.Name() + "." + f.Name, offset: base + f.Offset, typ: f.Type, index: len(rt.fields)}
			if name != "" {
				if _, dup := rt.exact[name]; !dup || depth == 0 {
					rt.exact[name] = fi
				}
			} else if k := strings.ToLower(f.Name); rt.folded[k] == nil || depth == 0 {
				rt.folded[k] = fi
			}
			rt.fields = append(rt.fields, fi)
		}
	}
	walk(t, 0, 0)
	v, _ := rowTypes.LoadOrStore(t, rt)
	return v.(*rowType), nil
}

// field returns the field of a column, or nil.
func (rt *rowType) field(column string) *fieldInfo {
	if f, ok := rt.exact[column]; ok {
		return f
	}
	return rt.folded[strings.ToLower(column)]
}

// A planSet holds the column plans of one row type under one schema. It is
// used by one goroutine at a time (a TypedShape's, or under its mutex).
type planSet struct {
	rt     *rowType
	schema Schema
	plans  map[string]*colPlan
	order  []*colPlan // the plans of the last object's keys, in order
}

func newPlanSet(rt *rowType, schema Schema) *planSet {
	return &planSet{rt: rt, schema: schema, plans: map[string]*colPlan{}}
}

// colPlan is how one column goes into its field; nil field: ignored.
type colPlan struct {
	column string
	field  *fieldInfo
	pgType string
	set    setter // from Postgres text
	null   func(unsafe.Pointer) error
}

type setter func(p unsafe.Pointer, text string) error

func (ps *planSet) plan(column string) *colPlan {
	if cp, ok := ps.plans[column]; ok {
		return cp
	}
	cp := &colPlan{column: column}
	if len(ps.plans) < 4096 {
		ps.plans[strings.Clone(column)] = cp
	}
	f := ps.rt.field(column)
	if f == nil {
		return cp
	}
	cp.field = f
	col, known := ps.schema[column]
	if known {
		cp.pgType = col.Type + strings.Repeat("[]", col.Dims)
	}
	cp.set = makeSetter(f.typ, col, known, 0)
	cp.null = makeNull(f.typ)
	return cp
}

func (cp *colPlan) fail(err error) error {
	if fe, ok := err.(*FieldError); ok {
		return fe
	}
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		err = ne.Err // its message holds the value
	}
	return &FieldError{Column: cp.column, Type: cp.pgType, Field: cp.field.name, GoType: cp.field.typ, Err: err}
}

// decodeRow sets the fields at dst from row's values.
func (ps *planSet) decodeRow(row Row, dst unsafe.Pointer) error {
	for name, v := range row {
		cp := ps.plan(name)
		if cp.field == nil {
			continue
		}
		p := unsafe.Add(dst, cp.field.offset)
		var err error
		switch v := v.(type) {
		case nil:
			err = cp.null(p)
		case string:
			err = cp.set(p, v)
		default:
			err = assignValue(reflect.NewAt(cp.field.typ, p).Elem(), v)
		}
		if err != nil {
			return cp.fail(err)
		}
	}
	return nil
}

// decodeJSON sets the fields at dst from a value object in the wire format
// (column → string or null), as the stream would have put it in a Row.
func (ps *planSet) decodeJSON(raw string, dst unsafe.Pointer) error {
	p := scanner{s: raw}
	ferr, err := ps.scan(&p, dst, nil)
	if err != nil {
		return err
	}
	return ferr
}

// scan reads the value object at p into the fields at dst, noting in mask
// (if not nil) the fields it set. A field that does not decode is ferr (the
// first such), and the object is read to its end all the same; err is a
// JSON syntax error.
func (ps *planSet) scan(p *scanner, dst unsafe.Pointer, mask *uint64) (ferr, err error) {
	p.ws()
	if p.peek() == 'n' {
		return nil, p.lit("null")
	}
	if err := p.expect('{'); err != nil {
		return nil, err
	}
	p.ws()
	if p.peek() == '}' {
		p.i++
		return nil, nil
	}
	for k := 0; ; k++ {
		name, err := p.str()
		if err != nil {
			return ferr, err
		}
		var cp *colPlan
		if k < len(ps.order) && ps.order[k].column == name {
			cp = ps.order[k]
		} else {
			cp = ps.plan(name)
			if k < len(ps.order) {
				ps.order[k] = cp
			} else if k == len(ps.order) && k < 256 {
				ps.order = append(ps.order, cp)
			}
		}
		if err := p.expect(':'); err != nil {
			return ferr, err
		}
		v, null, err := p.strOrNull()
		if err != nil {
			return ferr, fmt.Errorf("column %q: expected a string or null: %w", name, err)
		}
		if f := cp.field; f != nil {
			fp := unsafe.Add(dst, f.offset)
			var e error
			if null {
				e = cp.null(fp)
			} else {
				e = cp.set(fp, v)
			}
			if e != nil {
				if ferr == nil {
					ferr = cp.fail(e)
				}
			} else if mask != nil && f.index < 64 {
				*mask |= 1 << f.index
			}
		}
		p.ws()
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			return ferr, nil
		default:
			return ferr, errSyntax
		}
	}
}

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
		bits := t.Bits()
		return func(p unsafe.Pointer, text string) error {
			f, err := strconv.ParseFloat(text, bits)
			if bits == 32 {
				*(*float32)(p) = float32(f)
			} else {
				*(*float64)(p) = f
			}
			return err
		}
	case reflect.Bool:
		if isArray || known && cl != classBool {
			return mismatch
		}
		return func(p unsafe.Pointer, text string) error {
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
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 && !isArray {
			if cl == classBytea {
				return func(p unsafe.Pointer, text string) error {
					h, ok := strings.CutPrefix(text, `\x`)
					if !ok {
						return errors.New("not bytea hex text")
					}
					b, err := hex.DecodeString(h)
					*(*[]byte)(p) = b
					return err
				}
			}
			return func(p unsafe.Pointer, text string) error {
				*(*[]byte)(p) = []byte(text)
				return nil
			}
		}
		if known && !isArray {
			return mismatch
		}
		return sliceSetter(t, col, known, dim)
	}
	return mismatch
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

// sliceSetter fills a slice field from an array literal, one dimension.
func sliceSetter(t reflect.Type, col Column, known bool, dim int) setter {
	et := t.Elem()
	if et.Kind() == reflect.String && !reflect.PointerTo(et).Implements(scannerType) && !reflect.PointerTo(et).Implements(unmarshalType) && (!known || col.Dims == dim+1) {
		return func(p unsafe.Pointer, text string) error {
			out := (*[]string)(p)
			*out = make([]string, 0, strings.Count(text, ",")+1) // never the old slice: views share it
			return scanArray(text, func(el string, null bool) error {
				if null {
					return ErrNullField
				}
				*out = append(*out, el)
				return nil
			})
		}
	}
	elem := makeSetter(et, col, known, dim+1)
	null := makeNull(et)
	nested := known && col.Dims > dim+1
	return func(p unsafe.Pointer, text string) error {
		sv := reflect.NewAt(t, p).Elem()
		s := reflect.MakeSlice(t, 0, 4)
		add := func(el string, null bool, set setter, setNull func(unsafe.Pointer) error) error {
			s = reflect.Append(s, reflect.Zero(et))
			ep := s.Index(s.Len() - 1).Addr().UnsafePointer()
			if null {
				return setNull(ep)
			}
			return set(ep, el)
		}
		var err error
		if nested {
			err = scanArrayNested(text, func(sub string) error { return add(sub, false, elem, null) })
		} else {
			err = scanArray(text, func(el string, isNull bool) error { return add(el, isNull, elem, null) })
		}
		if err != nil {
			return err
		}
		sv.Set(s)
		return nil
	}
}

// scanArray calls f with every element of a one-dimensional array literal.
func scanArray(text string, f func(el string, null bool) error) error {
	s := text
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return errors.New("malformed array dimensions")
		}
		s = s[eq+1:]
	}
	p := arrayParser{s: s}
	p.ws()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return errors.New("not an array")
	}
	p.i++
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
	} else {
		for {
			p.ws()
			if p.i >= len(p.s) {
				return errors.New("unterminated array")
			}
			switch p.s[p.i] {
			case '{':
				return errors.New("array has more dimensions than the field")
			case '"':
				t, err := p.quoted()
				if err != nil {
					return err
				}
				if err := f(t, false); err != nil {
					return err
				}
			default:
				start := p.i
				for p.i < len(p.s) && p.s[p.i] != ',' && p.s[p.i] != '}' {
					if p.s[p.i] == '{' || p.s[p.i] == '"' {
						return fmt.Errorf("unexpected %q in array", p.s[p.i])
					}
					p.i++
				}
				t := strings.TrimRight(p.s[start:p.i], " \t\n\r")
				if t == "" {
					return errors.New("empty array element")
				}
				if err := f(t, len(t) == 4 && strings.EqualFold(t, "NULL")); err != nil {
					return err
				}
			}
			p.ws()
			if p.i >= len(p.s) {
				return errors.New("unterminated array")
			}
			if p.s[p.i] == '}' {
				p.i++
				break
			}
			if p.s[p.i] != ',' {
				return errors.New("expected ',' or '}' in array")
			}
			p.i++
		}
	}
	p.ws()
	if p.i != len(p.s) {
		return errors.New("data after array")
	}
	return nil
}

// scanArrayNested calls f with the literal of every sub-array of a
// multi-dimensional array literal.
func scanArrayNested(text string, f func(sub string) error) error {
	s := text
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return errors.New("malformed array dimensions")
		}
		s = s[eq+1:]
	}
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return errors.New("not an array")
	}
	inner := s[1 : len(s)-1]
	depth, start, inQ, esc := 0, -1, false, false
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case esc:
			esc = false
		case inQ && c == '\\':
			esc = true
		case c == '"':
			inQ = !inQ
		case inQ:
		case c == '{':
			if depth == 0 {
				start = i
			}
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				if err := f(inner[start : i+1]); err != nil {
					return err
				}
			}
		}
	}
	if depth != 0 || inQ {
		return errors.New("unterminated array")
	}
	return nil
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
		if t.Kind() != reflect.Slice {
			break
		}
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
