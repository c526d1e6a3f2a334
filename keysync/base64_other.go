//go:build !amd64 || purego

package keysync

func decodeBase64Fast(dst []byte, src string) (consumed, written int) { return 0, 0 }

func encodeBase64Fast(dst, src []byte) (consumed, written int) { return 0, 0 }
