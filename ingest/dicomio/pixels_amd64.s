//go:build !purego

#include "textflag.h"

// func addSatS16SSE2(dst []int16, src []byte, ic int16)
//
// dst[i] = int16 at src[2i] (little endian) + ic, saturated to the int16
// range (PADDSW), for i < len(dst)&^7: eight pixels per instruction.
// src must hold 2*len(dst) bytes. SSE2 is part of every amd64 CPU.
TEXT ·addSatS16SSE2(SB), NOSPLIT, $0-50
	MOVQ    dst_base+0(FP), DI
	MOVQ    dst_len+8(FP), CX
	MOVQ    src_base+24(FP), SI
	MOVWLZX ic+48(FP), AX
	MOVQ    AX, X0
	PSHUFLW $0, X0, X0
	PSHUFD  $0, X0, X0
	SHRQ    $3, CX
	JZ      done

loop:
	MOVOU  (SI), X1
	PADDSW X0, X1
	MOVOU  X1, (DI)
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    loop

done:
	RET

// func maskAddSatS16SSE2(dst []int16, src []byte, mask uint16, ic int16)
//
// dst[i] = (uint16 at src[2i] & mask) as int16 + ic, saturated (PAND, then
// PADDSW), for i < len(dst)&^7. mask must clear the sign bit (unsigned
// samples of at most 15 bits at the bottom of the word), so the masked
// value is a non-negative int16 and the saturating add is the clamped sum.
TEXT ·maskAddSatS16SSE2(SB), NOSPLIT, $0-52
	MOVQ    dst_base+0(FP), DI
	MOVQ    dst_len+8(FP), CX
	MOVQ    src_base+24(FP), SI
	MOVWLZX mask+48(FP), AX
	MOVQ    AX, X2
	PSHUFLW $0, X2, X2
	PSHUFD  $0, X2, X2
	MOVWLZX ic+50(FP), AX
	MOVQ    AX, X0
	PSHUFLW $0, X0, X0
	PSHUFD  $0, X0, X0
	SHRQ    $3, CX
	JZ      mdone

mloop:
	MOVOU  (SI), X1
	PAND   X2, X1
	PADDSW X0, X1
	MOVOU  X1, (DI)
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    mloop

mdone:
	RET
