package proxy

import (
	"regexp"
	"testing"
)

// The validators were regexps; these are those regexps, kept as the
// specification the hand-written validators must match exactly.
var validatorSpecs = []struct {
	name  string
	valid func(string) bool
	re    *regexp.Regexp
}{
	{"offset", validOffset, regexp.MustCompile(`^(-1|now|[0-9]{1,20}_([0-9]{1,20}|inf))$`)},
	{"token", validToken, regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)},
	{"cursor", validCursor, regexp.MustCompile(`^[0-9]{0,20}$`)},
	{"flag", validFlag, regexp.MustCompile(`^(true|false)$`)},
	{"log", validLog, regexp.MustCompile(`^(full|changes_only)$`)},
	{"request id", validRequestID, regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)},
	{"rule name", validRuleName, regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)},
	{"subscription id", validSubID, regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)},
}

func checkValidators(t *testing.T, s string) {
	t.Helper()
	for _, v := range validatorSpecs {
		if got, want := v.valid(s), v.re.MatchString(s); got != want {
			t.Errorf("%s(%q) = %v, the specification says %v", v.name, s, got, want)
		}
	}
}

func TestValidators(t *testing.T) {
	long := func(n int, c string) (s string) {
		for range n {
			s += c
		}
		return s
	}
	for _, s := range []string{
		"", "-1", "now", "0_0", "0_inf", "12_34", "_0", "0_", "0__0", "0_0_0", "-2", "NOW", "0_Inf", "1_inf ",
		long(20, "9") + "_" + long(20, "9"), long(21, "9") + "_0", "0_" + long(21, "1"),
		"true", "false", "True", "full", "changes_only", "changes-only",
		"abc", "a.b:c-d_e", "a/b", "a b", "a\n", "\na", "é", "a\x00",
		long(64, "a"), long(65, "a"), long(128, "b"), long(129, "b"), long(20, "1"), long(21, "1"),
	} {
		checkValidators(t, s)
	}
}

func FuzzValidators(f *testing.F) {
	for _, s := range []string{"-1", "0_inf", "12_34", "abc.def:1-2_3", "true", "changes_only"} {
		f.Add(s)
	}
	f.Fuzz(checkValidators)
}
