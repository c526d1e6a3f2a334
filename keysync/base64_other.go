//go:build !amd64 || purego

package keysync

func decodeBase64Fast(dst []byte, src string) (consumed, written int) { return 0, 0 }
