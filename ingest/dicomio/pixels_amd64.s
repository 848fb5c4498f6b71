//go:build !purego

#include "textflag.h"

// extremes sets X6 to eight lanes of 0x7fff and X4 to eight of 0x8000:
// the running minimum and maximum of the pixels written, and X5 to 0x8000
// and X7 to 0x7fff, to compare them with at the end.
#define EXTREMES \
	MOVL    $0x7fff, AX \
	MOVQ    AX, X7 \
	PSHUFLW $0, X7, X7 \
	PSHUFD  $0, X7, X7 \
	MOVL    $0x8000, AX \
	MOVQ    AX, X5 \
	PSHUFLW $0, X5, X5 \
	PSHUFD  $0, X5, X5 \
	MOVO    X7, X6 \
	MOVO    X5, X4

// HASEXTREME sets AX to nonzero when the minimum (X6) holds -32768 or the
// maximum (X4) 32767 in some lane.
#define HASEXTREME \
	PCMPEQW  X5, X6 \
	PCMPEQW  X7, X4 \
	POR      X4, X6 \
	PMOVMSKB X6, AX

// func addSatS16SSE2(dst []int16, src []byte, ic int16) (extreme bool)
//
// dst[i] = int16 at src[2i] (little endian) + ic, saturated to the int16
// range (PADDSW), for i < len(dst)&^7: eight pixels per instruction.
// extreme reports whether any pixel written is -32768 or 32767 (a running
// PMINSW and PMAXSW: hasExtreme without a second pass over the frame).
// src must hold 2*len(dst) bytes. SSE2 is part of every amd64 CPU.
TEXT ·addSatS16SSE2(SB), NOSPLIT, $0-57
	MOVQ    dst_base+0(FP), DI
	MOVQ    dst_len+8(FP), CX
	MOVQ    src_base+24(FP), SI
	MOVWLZX ic+48(FP), AX
	MOVQ    AX, X0
	PSHUFLW $0, X0, X0
	PSHUFD  $0, X0, X0
	EXTREMES
	SHRQ    $3, CX
	JZ      done

loop:
	MOVOU  (SI), X1
	PADDSW X0, X1
	MOVOU  X1, (DI)
	PMINSW X1, X6
	PMAXSW X1, X4
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    loop

done:
	HASEXTREME
	TESTL AX, AX
	SETNE extreme+56(FP)
	RET

// func maskAddSatS16SSE2(dst []int16, src []byte, mask uint16, ic int16) (extreme bool)
//
// dst[i] = (uint16 at src[2i] & mask) as int16 + ic, saturated (PAND, then
// PADDSW), for i < len(dst)&^7. mask must clear the sign bit (unsigned
// samples of at most 15 bits at the bottom of the word), so the masked
// value is a non-negative int16 and the saturating add is the clamped sum.
// extreme is as for addSatS16SSE2.
TEXT ·maskAddSatS16SSE2(SB), NOSPLIT, $0-57
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
	EXTREMES
	SHRQ    $3, CX
	JZ      mdone

mloop:
	MOVOU  (SI), X1
	PAND   X2, X1
	PADDSW X0, X1
	MOVOU  X1, (DI)
	PMINSW X1, X6
	PMAXSW X1, X4
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    mloop

mdone:
	HASEXTREME
	TESTL AX, AX
	SETNE extreme+56(FP)
	RET
