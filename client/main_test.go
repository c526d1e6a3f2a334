package client

import (
	"os"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
