package electrictest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A shape definition is checked here against the table it names, as
// Electric does: its columns, and its where clause, which Postgres
// type-checks. Failures are 400s with Electric's messages.

// requestError is a validation failure reported as 400 in Electric's format.
type requestError struct {
	field, msg string
}

func (e *requestError) Error() string { return e.field + ": " + e.msg }

// selectColumns validates columns and queryable_columns as Electric's
// Shape.validate_queryable_columns and validate_selected_columns do, and
// returns the selected columns and the columns of the row key (table
// order). A table without a primary key is keyed by all its columns, in
// table order (Electric's Inspector.get_pk_cols), so they all count as
// primary key columns here.
func selectColumns(t *table, def shapeDef) (cols, keyCols []int, err error) {
	keyCols = t.pk
	if len(keyCols) == 0 {
		for i := range t.columns {
			keyCols = append(keyCols, i)
		}
	}
	keyNames := make([]string, 0, len(keyCols)+len(t.generated))
	for _, i := range keyCols {
		keyNames = append(keyNames, t.columns[i].name)
	}
	if len(t.pk) == 0 {
		keyNames = append(keyNames, t.generated...) // every column
	}
	if err := checkColumnLists(t, def, keyNames); err != nil {
		return nil, nil, err
	}
	return projection(t, def), keyCols, nil
}

// checkColumnLists checks queryable_columns and columns against the table
// and its key columns (keyNames), failing with Electric's messages.
func checkColumnLists(t *table, def shapeDef, keyNames []string) error {
	exists := func(name string) bool { return t.index(name) >= 0 || slices.Contains(t.generated, name) }
	if def.queryable != nil {
		if missing := missingFrom(def.queryable, keyNames); len(missing) > 0 {
			return &requestError{"queryable_columns", "The list of queryable columns must include all primary key columns, missing: " + strings.Join(missing, ", ")}
		}
		if unknown := namesNotIn(def.queryable, exists); len(unknown) > 0 {
			return &requestError{"queryable_columns", "The following queryable columns are not found on the table: " + strings.Join(unknown, ", ")}
		}
	}
	if def.columns == nil {
		selected := def.queryable
		if selected == nil {
			selected = t.generated // with every other column
		}
		if gen := t.generatedIn(selected); len(gen) > 0 {
			return &requestError{"columns", "The following columns are generated and cannot be included in the shape: " + strings.Join(gen, ", ") +
				". You can exclude them from the shape by explicitly listing which columns to fetch in the 'columns' query param"}
		}
		return nil
	}
	if missing := missingFrom(def.columns, keyNames); len(missing) > 0 {
		return &requestError{"columns", "The list of columns must include all primary key columns, missing: " + strings.Join(missing, ", ")}
	}
	selectable := exists
	if def.queryable != nil {
		selectable = func(name string) bool { return slices.Contains(def.queryable, name) }
	}
	if unknown := namesNotIn(def.columns, selectable); len(unknown) > 0 {
		return &requestError{"columns", "The following columns are not found on the table: " + strings.Join(unknown, ", ")}
	}
	if gen := t.generatedIn(def.columns); len(gen) > 0 {
		return &requestError{"columns", "The following columns are generated and cannot be included in the shape: " + strings.Join(gen, ", ")}
	}
	return nil
}

// projection returns the selected columns of a valid definition: those of
// columns in its order (once each), else those of queryable_columns in
// table order, else every column.
func projection(t *table, def shapeDef) []int {
	var cols []int
	switch {
	case def.columns != nil:
		for _, name := range def.columns {
			if i := t.index(name); !slices.Contains(cols, i) {
				cols = append(cols, i)
			}
		}
	case def.queryable != nil:
		for i, c := range t.columns {
			if slices.Contains(def.queryable, c.name) {
				cols = append(cols, i)
			}
		}
	default:
		for i := range t.columns {
			cols = append(cols, i)
		}
	}
	return cols
}

// missingFrom returns the names of want that list lacks.
func missingFrom(list, want []string) []string {
	var missing []string
	for _, k := range want {
		if !slices.Contains(list, k) {
			missing = append(missing, k)
		}
	}
	return missing
}

// namesNotIn returns the names of list that ok refuses.
func namesNotIn(list []string, ok func(string) bool) []string {
	var out []string
	for _, name := range list {
		if !ok(name) {
			out = append(out, name)
		}
	}
	return out
}

// generatedIn returns the table's generated columns that list names.
func (t *table) generatedIn(list []string) []string {
	var out []string
	for _, g := range t.generated {
		if slices.Contains(list, g) {
			out = append(out, g)
		}
	}
	return out
}

// validateWhere lets Postgres type-check the where clause against the table,
// after checkWhere has made sure it is a single boolean filter. A clause with
// a subquery (see parseSubqueryWhere) gives the shape's subquery part.
func (s *Server) validateWhere(ctx context.Context, t *table, def shapeDef) (*subShape, error) {
	wc, sub, where, err := s.splitWhere(ctx, t, def)
	if err != nil {
		return nil, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	const prefix = "SELECT (\n"
	desc, err := pc.Prepare(ctx, "", prefix+where+"\n) FROM "+def.rel.Quoted(), nil)
	if err != nil {
		return nil, whereFromPgError(err, len(prefix))
	}
	if len(desc.Fields) != 1 || desc.Fields[0].DataTypeOID != 16 {
		return nil, &requestError{"where", "WHERE clause must return a boolean"}
	}
	if n := len(desc.ParamOIDs); n > len(def.params) {
		missing := len(def.params) + 1
		return nil, &requestError{"where", fmt.Sprintf("At location %d: parameter $%d was not provided", wc.params[missing], missing)}
	} else if n < len(def.params) {
		return nil, &requestError{"params", fmt.Sprintf("where uses %d parameters but %d were given", n, len(def.params))}
	}
	if err := checkVolatile(ctx, conn, wc.functions); err != nil {
		return nil, err
	}
	// Changes are evaluated by evalSQL: it must accept the clause too (no
	// schema-qualified or system columns, no functions of the table's row
	// type), or changes would silently not match.
	var evals []string
	if sub != nil {
		evals = []string{evalSQL(t, sub.outerWhere, len(sub.outerUsed)+1), sub.innerEval}
	} else {
		evals = []string{evalSQL(t, def.where, len(def.params))}
	}
	for _, q := range evals {
		if _, err := pc.Prepare(ctx, "", q, nil); err != nil {
			return nil, whereFromPgError(err, len(prefix))
		}
	}
	// Plan the snapshot query with the params bound, without running it:
	// this rejects parameter values that do not fit their type, constant
	// expressions that fail, and what is not allowed in a WHERE clause
	// (aggregates, window and set-returning functions).
	explain := "EXPLAIN SELECT FROM " + def.rel.Quoted() + " WHERE (\n"
	if err := pc.ExecParams(ctx, explain+where+"\n)", textParams(def.params), nil, nil, nil).Read().Err; err != nil {
		return nil, whereFromPgError(err, len(explain))
	}
	return sub, nil
}

// splitWhere checks a where clause lexically (checkWhere, or
// parseSubqueryWhere and newSubShape for a clause with a subquery, whose
// table it loads). It returns what the check learnt, the subquery part (nil
// without one) and the clause as the snapshot query runs it.
func (s *Server) splitWhere(ctx context.Context, t *table, def shapeDef) (whereCheck, *subShape, string, error) {
	sq, err := parseSubqueryWhere(def.where)
	if err != nil {
		return whereCheck{}, nil, "", &requestError{"where", err.Error()}
	}
	if sq == nil {
		wc, err := checkWhere(def.where)
		if err != nil {
			return wc, nil, "", &requestError{"where", err.Error()}
		}
		return wc, nil, def.where, nil
	}
	switch sq.innerRel.Schema {
	case "pg_catalog", "information_schema", "pg_toast":
		return whereCheck{}, nil, "", &requestError{"where", "the subquery's table cannot be a system table"}
	}
	inner, err := loadTable(ctx, s.pool, sq.innerRel)
	if errors.Is(err, errNoTable) {
		return whereCheck{}, nil, "", &requestError{"where", fmt.Sprintf("Table %q.%q in the subquery does not exist", sq.innerRel.Schema, sq.innerRel.Name)}
	}
	if err != nil {
		return whereCheck{}, nil, "", err
	}
	sub, err := newSubShape(sq, t, inner, s.stack)
	if err != nil {
		return whereCheck{}, nil, "", err
	}
	return sq.check, sub, sq.full(), nil
}

// checkVolatile refuses a clause that calls a volatile function (pg_sleep,
// nextval, ...). functions are the names of the functions it calls.
func checkVolatile(ctx context.Context, conn *pgxpool.Conn, functions []string) error {
	if len(functions) == 0 {
		return nil
	}
	// Quoted names keep their case, unquoted ones are lower-cased.
	var volatile []string
	err := conn.QueryRow(ctx, "SELECT COALESCE(array_agg(DISTINCT proname::text), '{}') FROM pg_proc WHERE (proname = ANY($1) OR lower(proname) = ANY($1)) AND provolatile = 'v'", functions).Scan(&volatile)
	if err != nil {
		return err
	}
	if len(volatile) > 0 {
		return &requestError{"where", "volatile functions are not allowed in a where clause: " + strings.Join(volatile, ", ")}
	}
	return nil
}

// whereFromPgError turns a Postgres error into a 400 message of our own
// wording: Postgres' text is never passed through.
func whereFromPgError(err error, prefixLen int) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	at := ""
	if pgErr.Position > int32(prefixLen) {
		at = fmt.Sprintf("At location %d: ", int(pgErr.Position)-prefixLen-1)
	}
	var msg string
	switch pgErr.Code {
	case "42601":
		msg = "syntax error"
	case "42703", "42P01":
		msg = "unknown column reference"
	case "42883":
		msg = "unknown function or operator, or arguments of the wrong type"
	case "42P02":
		msg = "a parameter has no value in params"
	case "42804", "42P18", "42P08", "22P02", "42846":
		msg = "a value or parameter does not fit the type it is compared with"
	case "42803":
		msg = "aggregate functions are not allowed in a where clause"
	case "42P20":
		msg = "window functions are not allowed in a where clause"
	case "0A000":
		msg = "set-returning functions are not allowed in a where clause"
	case "22012":
		msg = "division by zero"
	case "22003":
		msg = "a value is out of range for its type"
	case "22021", "22P05":
		msg = "invalid character in a value"
	default:
		msg = "invalid where clause"
	}
	return &requestError{"where", at + msg}
}
