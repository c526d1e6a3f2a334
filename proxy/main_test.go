package proxy

import (
	"os"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestMain stops the private Postgres that the database tests start on
// first use (see internal/pgtest).
func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
