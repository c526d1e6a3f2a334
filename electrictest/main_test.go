package electrictest_test

import (
	"os"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestMain is the only one for both electrictest and electrictest_test
// (they share a test binary): it stops the private Postgres afterwards.
func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
