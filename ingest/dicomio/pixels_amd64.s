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
