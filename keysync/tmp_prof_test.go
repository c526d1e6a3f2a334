package keysync

import "testing"

func BenchmarkTmpOpenReuse(b *testing.B) {
	ks := benchKeyset(b)
	cell, _ := Seal(ks, benchContext, make([]byte, 1024))
	buf := make([]byte, 0, 4096)
	for b.Loop() {
		open(ks, &benchContext, cell, buf[:0])
	}
}
