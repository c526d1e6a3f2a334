package electrictest

import (
	"errors"
	"math"
	"strconv"
	"strings"
)

// An Offset is a position in a shape log, written on the wire as
// "<tx>_<op>". Tx is a Postgres commit LSN as a decimal integer (0 inside the
// initial snapshot) and Op the position of a change inside that transaction,
// or "inf" for the end of the snapshot region.
type Offset struct {
	Tx uint64
	Op uint64 // math.MaxUint64 is written as "inf"
}

var (
	// BeforeAll is the offset -1: the start of a shape log.
	BeforeAll = Offset{Tx: math.MaxUint64, Op: math.MaxUint64}
	// SnapshotEnd is 0_inf: after the snapshot, before any change.
	SnapshotEnd = Offset{Tx: 0, Op: math.MaxUint64}
)

var errBadOffset = errors.New("has invalid format")

// ParseOffset parses "-1" or "<tx>_<op>". "now" is handled by the caller.
// "-1_0" is -1 too, as in Electric (LogOffset.before_all()).
func ParseOffset(s string) (Offset, error) {
	if s == "-1" || s == "-1_0" {
		return BeforeAll, nil
	}
	tx, op, ok := strings.Cut(s, "_")
	if !ok || strings.Contains(op, "_") {
		return Offset{}, errBadOffset
	}
	t, err := parseDigits(tx)
	if err != nil {
		return Offset{}, err
	}
	if op == "inf" {
		return Offset{Tx: t, Op: math.MaxUint64}, nil
	}
	o, err := parseDigits(op)
	if err != nil {
		return Offset{}, err
	}
	return Offset{Tx: t, Op: o}, nil
}

func parseDigits(s string) (uint64, error) {
	if s == "" {
		return 0, errBadOffset
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errBadOffset
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errBadOffset
	}
	return v, nil
}

// IsBeforeAll reports whether o is the offset -1.
func (o Offset) IsBeforeAll() bool { return o == BeforeAll }

func (o Offset) String() string {
	if o.IsBeforeAll() {
		return "-1"
	}
	op := "inf"
	if o.Op != math.MaxUint64 {
		op = strconv.FormatUint(o.Op, 10)
	}
	return strconv.FormatUint(o.Tx, 10) + "_" + op
}

// Compare orders offsets; -1 sorts before every other offset.
func (o Offset) Compare(p Offset) int {
	switch {
	case o == p:
		return 0
	case o.IsBeforeAll():
		return -1
	case p.IsBeforeAll():
		return 1
	case o.Tx != p.Tx:
		if o.Tx < p.Tx {
			return -1
		}
		return 1
	case o.Op < p.Op:
		return -1
	default:
		return 1
	}
}
