package keysync

import (
	"errors"
	"strings"
	"testing"
)

var itemsSpec = TableSpec{
	Table:        "items",
	Columns:      []string{"title", "body"},
	TenantColumn: "tenant_id",
	RowKey:       []string{"id"},
}

func TestTableSpecValidate(t *testing.T) {
	if err := itemsSpec.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(s *TableSpec){
		"no table":              func(s *TableSpec) { s.Table = "" },
		"no columns":            func(s *TableSpec) { s.Columns = nil },
		"no tenant column":      func(s *TableSpec) { s.TenantColumn = "" },
		"no row key":            func(s *TableSpec) { s.RowKey = nil },
		"tenant encrypted":      func(s *TableSpec) { s.Columns = []string{"tenant_id"} },
		"row key encrypted":     func(s *TableSpec) { s.Columns = []string{"id", "title"} },
		"column twice":          func(s *TableSpec) { s.Columns = []string{"title", "title"} },
		"empty column":          func(s *TableSpec) { s.Columns = []string{""} },
		"NUL in table":          func(s *TableSpec) { s.Table = "it\x00ems" },
		"empty table of schema": func(s *TableSpec) { s.Table = "public." },
	}
	for name, f := range bad {
		s := itemsSpec
		f(&s)
		if err := s.Validate(); !errors.Is(err, ErrInvalidContext) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	s := itemsSpec
	s.RowKey, s.UnboundRows = nil, true
	if err := s.Validate(); err != nil {
		t.Errorf("unbound rows: %v", err)
	}
	if itemsSpec.QualifiedTable() != "public.items" || (&TableSpec{Table: "a.b"}).QualifiedTable() != "a.b" {
		t.Error("QualifiedTable")
	}
	if !itemsSpec.Encrypts("body") || itemsSpec.Encrypts("id") {
		t.Error("Encrypts")
	}
}

func TestTableSpecCellContext(t *testing.T) {
	row := map[string]any{"id": int64(42), "tenant_id": "acme", "title": "x"}
	c, err := itemsSpec.CellContext(row, "title")
	if err != nil {
		t.Fatal(err)
	}
	want := CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"42"}}
	if c.Table != want.Table || c.Column != want.Column || c.Tenant != want.Tenant || strings.Join(c.RowKey, ",") != "42" {
		t.Fatalf("CellContext = %+v", c)
	}
	for name, row := range map[string]map[string]any{
		"no tenant":     {"id": "1"},
		"NULL tenant":   {"id": "1", "tenant_id": nil},
		"NULL row key":  {"id": nil, "tenant_id": "acme"},
		"float row key": {"id": 1.5, "tenant_id": "acme"},
	} {
		if _, err := itemsSpec.CellContext(row, "title"); !errors.Is(err, ErrInvalidContext) {
			t.Errorf("%s: %v", name, err)
		}
	}
	unbound := itemsSpec
	unbound.UnboundRows = true
	c, err = unbound.CellContext(map[string]any{"tenant_id": "acme"}, "title")
	if err != nil || c.RowKey != nil {
		t.Fatalf("unbound: %+v, %v", c, err)
	}
}

func TestSealOpenRow(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	row := map[string]any{"id": "1", "tenant_id": "acme", "title": "Hello", "body": nil, "other": "plain"}
	if err := itemsSpec.SealRow(ks, row); err != nil {
		t.Fatal(err)
	}
	if row["body"] != nil || row["other"] != "plain" || !strings.HasPrefix(row["title"].(string), CellPrefix) {
		t.Fatalf("sealed row %v", row)
	}
	sealedTitle := row["title"]

	// Moving the row's cells to another row fails per cell; other cells
	// still open.
	moved := map[string]any{"id": "2", "tenant_id": "acme", "title": sealedTitle, "body": "not a cell"}
	err := itemsSpec.OpenRow(ks, moved)
	if !errors.Is(err, ErrAuth) || !errors.Is(err, ErrNotEncrypted) {
		t.Fatalf("OpenRow(moved) = %v, want ErrAuth and ErrNotEncrypted", err)
	}
	if moved["title"] != sealedTitle {
		t.Fatal("a cell that failed to open was changed")
	}
	if err := itemsSpec.OpenRow(ks, row); err != nil {
		t.Fatal(err)
	}
	if row["title"] != "Hello" || row["body"] != nil {
		t.Fatalf("opened row %v", row)
	}

	// SealRow leaves the row unchanged on error.
	row = map[string]any{"id": "1", "tenant_id": "globex", "title": "Hello"}
	if err := itemsSpec.SealRow(ks, row); !errors.Is(err, ErrTenantMismatch) {
		t.Fatalf("SealRow for another tenant: %v", err)
	}
	if row["title"] != "Hello" {
		t.Fatal("SealRow changed the row on error")
	}
	row = map[string]any{"id": "1", "tenant_id": "acme", "title": 3.5}
	if err := itemsSpec.SealRow(ks, row); err == nil {
		t.Fatal("SealRow sealed a float")
	}
	// Bytes are sealed too, and open as text.
	row = map[string]any{"id": "1", "tenant_id": "acme", "title": []byte("raw")}
	if err := itemsSpec.SealRow(ks, row); err != nil {
		t.Fatal(err)
	}
	if err := itemsSpec.OpenRow(ks, row); err != nil || row["title"] != "raw" {
		t.Fatalf("bytes: %v, %v", row["title"], err)
	}
	// A non-text value in an encrypted column is not a cell.
	row = map[string]any{"id": "1", "tenant_id": "acme", "title": int64(5)}
	if err := itemsSpec.OpenRow(ks, row); !errors.Is(err, ErrNotEncrypted) {
		t.Fatalf("OpenRow(int) = %v", err)
	}
}
