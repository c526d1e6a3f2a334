package electrictest

import (
	"math"
	"testing"
)

// Offsets as electric-protocol.md §1.2 and Electric's LogOffset.from_string
// describe them.
func TestParseOffset(t *testing.T) {
	ok := []struct {
		in   string
		want Offset
		str  string
	}{
		{"-1", BeforeAll, "-1"},
		{"-1_0", BeforeAll, "-1"},
		{"0_0", Offset{0, 0}, "0_0"},
		{"0_inf", SnapshotEnd, "0_inf"},
		{"0_02", Offset{0, 2}, "0_2"},
		{"007_1", Offset{7, 1}, "7_1"},
		{"123_456", Offset{123, 456}, "123_456"},
		{"24151480_3", Offset{24151480, 3}, "24151480_3"},
		{"5_inf", Offset{5, math.MaxUint64}, "5_inf"},
		{"18446744073709551615_0", Offset{math.MaxUint64, 0}, "18446744073709551615_0"},
	}
	for _, c := range ok {
		got, err := ParseOffset(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseOffset(%q) = %v, %v; want %v", c.in, got, err, c.want)
			continue
		}
		if got.String() != c.str {
			t.Errorf("ParseOffset(%q).String() = %q, want %q", c.in, got.String(), c.str)
		}
	}
	for _, in := range []string{"", "10", "1_2_3", "1_2 ", " 1_2", "10_32.1", "0_-1", "-1_1", "-2", "-1_", "_", "_1", "1_",
		"inf_1", "inf", "now", "abc", "1__2", "0x1_0", "1_inf_", "1_Inf", "1_INF", "١_٢", "18446744073709551616_0", "0_18446744073709551616"} {
		if o, err := ParseOffset(in); err == nil {
			t.Errorf("ParseOffset(%q) = %v, want an error", in, o)
		} else if err.Error() != "has invalid format" {
			t.Errorf("ParseOffset(%q): %q, want Electric's \"has invalid format\"", in, err)
		}
	}
}

func TestOffsetOrder(t *testing.T) {
	order := []Offset{BeforeAll, {0, 0}, {0, 1}, {0, 99}, SnapshotEnd, {1, 0}, {1, 5}, {1, math.MaxUint64}, {2, 0}, {math.MaxUint64 - 1, 0}}
	for i, a := range order {
		for j, b := range order {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func FuzzParseOffset(f *testing.F) {
	for _, s := range []string{"-1", "-1_0", "0_0", "0_inf", "0_02", "123_456", "10", "1_2_3", "0_-1", "10_32.1", "1_2 ", "now", "18446744073709551616_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOffset(s)
		if err != nil {
			return
		}
		// The canonical form parses back to the same offset.
		p, err := ParseOffset(o.String())
		if err != nil || p != o || p.Compare(o) != 0 {
			t.Fatalf("ParseOffset(%q) = %v, but its String %q parses to %v, %v", s, o, o.String(), p, err)
		}
		if o.Compare(BeforeAll) < 0 || (o != BeforeAll && o.Compare(BeforeAll) != 1) {
			t.Fatalf("%v sorts before -1", o)
		}
	})
}
