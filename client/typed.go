package client

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
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
