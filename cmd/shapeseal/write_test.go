package main

import (
	"strings"
	"testing"
)

// TestParseRow: a bad row says plainly what is wrong with it.
func TestParseRow(t *testing.T) {
	for in, want := range map[string]string{
		`{"id": 1, "title": x}`: "not valid JSON at character 20: invalid character 'x' looking for beginning of value",
		`{"id": 1, "title": "`:  "the object is cut short",
		`[1, 2]`:                "want a JSON object of column names and values, got an array",
		`"title"`:               "got a string",
		`null`:                  "got null",
		`{"id": 1} {"id": 2}`:   "more than one JSON value",
	} {
		if _, err := parseRow([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
	row, err := parseRow([]byte(`{"id": 1, "title": "t"}`))
	if err != nil || row["title"] != "t" {
		t.Errorf("good row: %v, %v", row, err)
	}
	if plural(1, "row", "rows") != "1 row" || plural(0, "row", "rows") != "0 rows" || plural(2, "row", "rows") != "2 rows" {
		t.Error("plural")
	}
}
