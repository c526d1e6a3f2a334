//go:build !amd64 || purego

package b64url

func decodeFast(dst []byte, src string) (consumed, written int) { return 0, 0 }

func encodeFast(dst, src []byte) (consumed, written int) { return 0, 0 }

const useAVX2 = false
