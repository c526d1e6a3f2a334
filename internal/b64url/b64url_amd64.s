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

// Encoding, after the same paper: each lane takes 12 input bytes (the low
// lane from src, the high lane from src+12), VPSHUFB spreads every 3 bytes
// over a dword as b1 b0 b2 b1, multiplies and masks cut the dword into four
// six-bit indices, and the indices become letters by adding an offset looked
// up by class (0..25 +65, 26..51 +71, 52..61 -4, 62 '-' -17, 63 '_' +32).

DATA enc_shuf<>+0(SB)/8, $0x0405030401020001
DATA enc_shuf<>+8(SB)/8, $0x0A0B090A07080607
DATA enc_shuf<>+16(SB)/8, $0x0405030401020001
DATA enc_shuf<>+24(SB)/8, $0x0A0B090A07080607
GLOBL enc_shuf<>(SB), RODATA|NOPTR, $32

DATA enc_mask1<>+0(SB)/8, $0x0FC0FC000FC0FC00
DATA enc_mask1<>+8(SB)/8, $0x0FC0FC000FC0FC00
DATA enc_mask1<>+16(SB)/8, $0x0FC0FC000FC0FC00
DATA enc_mask1<>+24(SB)/8, $0x0FC0FC000FC0FC00
GLOBL enc_mask1<>(SB), RODATA|NOPTR, $32

DATA enc_mul1<>+0(SB)/8, $0x0400004004000040
DATA enc_mul1<>+8(SB)/8, $0x0400004004000040
DATA enc_mul1<>+16(SB)/8, $0x0400004004000040
DATA enc_mul1<>+24(SB)/8, $0x0400004004000040
GLOBL enc_mul1<>(SB), RODATA|NOPTR, $32

DATA enc_mask2<>+0(SB)/8, $0x003F03F0003F03F0
DATA enc_mask2<>+8(SB)/8, $0x003F03F0003F03F0
DATA enc_mask2<>+16(SB)/8, $0x003F03F0003F03F0
DATA enc_mask2<>+24(SB)/8, $0x003F03F0003F03F0
GLOBL enc_mask2<>(SB), RODATA|NOPTR, $32

DATA enc_mul2<>+0(SB)/8, $0x0100001001000010
DATA enc_mul2<>+8(SB)/8, $0x0100001001000010
DATA enc_mul2<>+16(SB)/8, $0x0100001001000010
DATA enc_mul2<>+24(SB)/8, $0x0100001001000010
GLOBL enc_mul2<>(SB), RODATA|NOPTR, $32

DATA enc_51<>+0(SB)/8, $0x3333333333333333
DATA enc_51<>+8(SB)/8, $0x3333333333333333
DATA enc_51<>+16(SB)/8, $0x3333333333333333
DATA enc_51<>+24(SB)/8, $0x3333333333333333
GLOBL enc_51<>(SB), RODATA|NOPTR, $32

DATA enc_26<>+0(SB)/8, $0x1A1A1A1A1A1A1A1A
DATA enc_26<>+8(SB)/8, $0x1A1A1A1A1A1A1A1A
DATA enc_26<>+16(SB)/8, $0x1A1A1A1A1A1A1A1A
DATA enc_26<>+24(SB)/8, $0x1A1A1A1A1A1A1A1A
GLOBL enc_26<>(SB), RODATA|NOPTR, $32

DATA enc_13<>+0(SB)/8, $0x0D0D0D0D0D0D0D0D
DATA enc_13<>+8(SB)/8, $0x0D0D0D0D0D0D0D0D
DATA enc_13<>+16(SB)/8, $0x0D0D0D0D0D0D0D0D
DATA enc_13<>+24(SB)/8, $0x0D0D0D0D0D0D0D0D
GLOBL enc_13<>(SB), RODATA|NOPTR, $32

DATA enc_lut<>+0(SB)/8, $0xFCFCFCFCFCFCFC47
DATA enc_lut<>+8(SB)/8, $0x00004120EFFCFCFC
DATA enc_lut<>+16(SB)/8, $0xFCFCFCFCFCFCFC47
DATA enc_lut<>+24(SB)/8, $0x00004120EFFCFCFC
GLOBL enc_lut<>(SB), RODATA|NOPTR, $32

// func encodeAVX2(dst []byte, src []byte) int
TEXT ·encodeAVX2(SB), NOSPLIT, $0-56
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), DX
	MOVQ src_base+24(FP), SI
	MOVQ src_len+32(FP), CX
	XORQ AX, AX

	VMOVDQU enc_shuf<>(SB), Y8
	VMOVDQU enc_mask1<>(SB), Y9
	VMOVDQU enc_mul1<>(SB), Y10
	VMOVDQU enc_mask2<>(SB), Y11
	VMOVDQU enc_mul2<>(SB), Y12
	VMOVDQU enc_51<>(SB), Y13
	VMOVDQU enc_26<>(SB), Y14
	VMOVDQU enc_13<>(SB), Y7
	VMOVDQU enc_lut<>(SB), Y15

encloop:
	CMPQ CX, $28 // the high lane reads 16 bytes from src+12
	JB   encdone
	CMPQ DX, $32
	JB   encdone

	VMOVDQU     (SI), X0
	VINSERTI128 $1, 12(SI), Y0, Y0
	VPSHUFB     Y8, Y0, Y0

	VPAND    Y9, Y0, Y1
	VPMULHUW Y10, Y1, Y1 // a and c
	VPAND    Y11, Y0, Y2
	VPMULLW  Y12, Y2, Y2 // b and d
	VPOR     Y1, Y2, Y0  // six-bit indices

	VPSUBUSB Y13, Y0, Y1 // 0 for 0..51, 1..12 for 52..63
	VPCMPGTB Y0, Y14, Y2 // index < 26
	VPAND    Y7, Y2, Y2
	VPOR     Y2, Y1, Y1  // 13 for 0..25
	VPSHUFB  Y1, Y15, Y1
	VPADDB   Y1, Y0, Y0
	VMOVDQU  Y0, (DI)

	ADDQ $24, SI
	SUBQ $24, CX
	ADDQ $32, DI
	SUBQ $32, DX
	ADDQ $24, AX
	JMP  encloop

encdone:
	VZEROUPPER
	MOVQ AX, ret+48(FP)
	RET
