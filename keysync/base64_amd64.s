//go:build amd64 && !purego

#include "textflag.h"

// Vectorized base64url decoding after W. Muła and D. Lemire, "Faster Base64
// Encoding and Decoding Using AVX2 Instructions" (ACM TOW 2018), with the
// lookup tables rebuilt for the URL alphabet "A-Z a-z 0-9 - _".
//
// Validation: a byte with high nibble h and low nibble l is valid iff
// lut_lo[l] & lut_hi[h] == 0. lut_hi gives each high nibble one class bit
// (0x01: 0x2_, 0x02: 0x3_, 0x04: 0x4_ and 0x6_, 0x08: 0x5_, 0x10: 0x7_,
// 0x20: everything else, including CR, LF and bytes >= 0x80); lut_lo[l] has
// the bits of the classes in which l is not a letter of the alphabet.
//
// Translation: value = byte + lut_roll[h], plus 33 for '_' (0x5F), the one
// letter whose offset differs from the rest of its high nibble.
//
//	h=2 '-'  +17    h=3 '0'-'9' +4    h=4,5 'A'-'Z' -65    '_' -32
//	h=6,7 'a'-'z' -71
//
// Packing: 32 six-bit values become 24 bytes with VPMADDUBSW (pairs to 12
// bits), VPMADDWD (pairs to 24 bits), VPSHUFB (big-endian byte order within
// each lane) and VPERMD (the two lanes' 12 bytes side by side).

DATA lut_lo<>+0(SB)/8, $0x2121212121212125
DATA lut_lo<>+8(SB)/8, $0x333B3A3B3B232121
DATA lut_lo<>+16(SB)/8, $0x2121212121212125
DATA lut_lo<>+24(SB)/8, $0x333B3A3B3B232121
GLOBL lut_lo<>(SB), RODATA|NOPTR, $32

DATA lut_hi<>+0(SB)/8, $0x1004080402012020
DATA lut_hi<>+8(SB)/8, $0x2020202020202020
DATA lut_hi<>+16(SB)/8, $0x1004080402012020
DATA lut_hi<>+24(SB)/8, $0x2020202020202020
GLOBL lut_hi<>(SB), RODATA|NOPTR, $32

DATA lut_roll<>+0(SB)/8, $0xB9B9BFBF04110000
DATA lut_roll<>+8(SB)/8, $0x0000000000000000
DATA lut_roll<>+16(SB)/8, $0xB9B9BFBF04110000
DATA lut_roll<>+24(SB)/8, $0x0000000000000000
GLOBL lut_roll<>(SB), RODATA|NOPTR, $32

DATA nibble<>+0(SB)/8, $0x0F0F0F0F0F0F0F0F
DATA nibble<>+8(SB)/8, $0x0F0F0F0F0F0F0F0F
DATA nibble<>+16(SB)/8, $0x0F0F0F0F0F0F0F0F
DATA nibble<>+24(SB)/8, $0x0F0F0F0F0F0F0F0F
GLOBL nibble<>(SB), RODATA|NOPTR, $32

DATA underscore<>+0(SB)/8, $0x5F5F5F5F5F5F5F5F
DATA underscore<>+8(SB)/8, $0x5F5F5F5F5F5F5F5F
DATA underscore<>+16(SB)/8, $0x5F5F5F5F5F5F5F5F
DATA underscore<>+24(SB)/8, $0x5F5F5F5F5F5F5F5F
GLOBL underscore<>(SB), RODATA|NOPTR, $32

DATA fix33<>+0(SB)/8, $0x2121212121212121
DATA fix33<>+8(SB)/8, $0x2121212121212121
DATA fix33<>+16(SB)/8, $0x2121212121212121
DATA fix33<>+24(SB)/8, $0x2121212121212121
GLOBL fix33<>(SB), RODATA|NOPTR, $32

DATA madd12<>+0(SB)/8, $0x0140014001400140
DATA madd12<>+8(SB)/8, $0x0140014001400140
DATA madd12<>+16(SB)/8, $0x0140014001400140
DATA madd12<>+24(SB)/8, $0x0140014001400140
GLOBL madd12<>(SB), RODATA|NOPTR, $32

DATA madd24<>+0(SB)/8, $0x0001100000011000
DATA madd24<>+8(SB)/8, $0x0001100000011000
DATA madd24<>+16(SB)/8, $0x0001100000011000
DATA madd24<>+24(SB)/8, $0x0001100000011000
GLOBL madd24<>(SB), RODATA|NOPTR, $32

DATA shuf<>+0(SB)/8, $0x090A040506000102
DATA shuf<>+8(SB)/8, $0xFFFFFFFF0C0D0E08
DATA shuf<>+16(SB)/8, $0x090A040506000102
DATA shuf<>+24(SB)/8, $0xFFFFFFFF0C0D0E08
GLOBL shuf<>(SB), RODATA|NOPTR, $32

DATA perm<>+0(SB)/8, $0x0000000100000000
DATA perm<>+8(SB)/8, $0x0000000400000002
DATA perm<>+16(SB)/8, $0x0000000600000005
DATA perm<>+24(SB)/8, $0x0000000000000000
GLOBL perm<>(SB), RODATA|NOPTR, $32

// func decodeAVX2(dst []byte, src string) int
TEXT ·decodeAVX2(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), DX
	MOVQ src_base+24(FP), SI
	MOVQ src_len+32(FP), CX
	XORQ AX, AX

	VMOVDQU lut_lo<>(SB), Y8
	VMOVDQU lut_hi<>(SB), Y9
	VMOVDQU lut_roll<>(SB), Y10
	VMOVDQU nibble<>(SB), Y11
	VMOVDQU underscore<>(SB), Y12
	VMOVDQU fix33<>(SB), Y13
	VMOVDQU madd12<>(SB), Y14
	VMOVDQU madd24<>(SB), Y15
	VMOVDQU shuf<>(SB), Y7
	VMOVDQU perm<>(SB), Y6

loop:
	CMPQ CX, $32
	JB   done
	CMPQ DX, $32
	JB   done

	VMOVDQU (SI), Y0
	VPSRLD  $4, Y0, Y1
	VPAND   Y11, Y1, Y1 // high nibbles
	VPAND   Y11, Y0, Y2 // low nibbles
	VPSHUFB Y2, Y8, Y3  // lut_lo[l]
	VPSHUFB Y1, Y9, Y4  // lut_hi[h]
	VPTEST  Y3, Y4
	JNZ     done        // a byte outside the alphabet

	VPSHUFB  Y1, Y10, Y5 // lut_roll[h]
	VPCMPEQB Y12, Y0, Y3 // '_'
	VPAND    Y13, Y3, Y3
	VPADDB   Y3, Y5, Y5
	VPADDB   Y5, Y0, Y0  // six-bit values

	VPMADDUBSW Y14, Y0, Y0
	VPMADDWD   Y15, Y0, Y0
	VPSHUFB    Y7, Y0, Y0
	VPERMD     Y0, Y6, Y0
	VMOVDQU    Y0, (DI)

	ADDQ $32, SI
	SUBQ $32, CX
	ADDQ $24, DI
	SUBQ $24, DX
	ADDQ $32, AX
	JMP  loop

done:
	VZEROUPPER
	MOVQ AX, ret+40(FP)
	RET
