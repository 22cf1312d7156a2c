/*
 * x86-64 decoder for the instructions that touch a trapped BAR mapping: the
 * MOV family a driver's MMIO accessors compile to (spec 06 §8), decoded into
 * what an MMIO emulator needs -- access width and direction, the register or
 * immediate on the other side, zero/sign extension of loads, the memory
 * operand, and the instruction length (to resume after it). Used by the shim's
 * SIGSEGV handler; self-contained (no libc beyond <stdint.h>/<stddef.h>).
 *
 * Forms: 88/89/8A/8B (MOV r/m <-> r, 0x66 and REX.W for the size),
 * C6 /0, C7 /0 (MOV imm -> r/m), 0F B6/B7 (MOVZX), 0F BE/BF (MOVSX),
 * REX.W 63 (MOVSXD), A0-A3 (MOV AL/rAX <-> moffs64), 0F 38 F9 (MOVDIRI),
 * 66 0F 38 F8 (MOVDIR64B, a 64-byte store whose destination is the register
 * operand's address). Full ModRM/SIB/disp8/disp32 and RIP-relative addressing,
 * REX.R/X/B, 0x67 address size, segment prefixes CS/DS/ES/SS (ignored).
 */
#ifndef IOMMUFD_EMU_MMIO_DECODE_H
#define IOMMUFD_EMU_MMIO_DECODE_H

#include <stddef.h>
#include <stdint.h>

/* General-purpose register numbers (the hardware encoding). */
enum mmio_gpr {
	MMIO_RAX, MMIO_RCX, MMIO_RDX, MMIO_RBX, MMIO_RSP, MMIO_RBP, MMIO_RSI, MMIO_RDI,
	MMIO_R8, MMIO_R9, MMIO_R10, MMIO_R11, MMIO_R12, MMIO_R13, MMIO_R14, MMIO_R15,
};

enum mmio_dir { MMIO_LOAD = 0, MMIO_STORE = 1 };
enum mmio_ext { MMIO_EXT_NONE = 0, MMIO_EXT_ZERO = 1, MMIO_EXT_SIGN = 2 };

enum mmio_decode_err {
	MMIO_OK = 0,
	MMIO_ERR_TRUNCATED = -1,   /* the bytes end inside the instruction */
	MMIO_ERR_UNSUPPORTED = -2, /* not a memory MOV form the decoder knows */
};

struct mmio_insn {
	uint8_t len;        /* instruction length in bytes */
	uint8_t width;      /* bytes accessed in memory: 1, 2, 4, 8, or 64 (MOVDIR64B) */
	uint8_t dir;        /* enum mmio_dir */
	uint8_t ext;        /* loads: enum mmio_ext applied to the loaded value */
	uint8_t reg_width;  /* width of the register operand: 1, 2, 4 or 8 */
	int8_t reg;         /* register operand (destination of a load, source of a store); -1 for an immediate */
	uint8_t reg_high8;  /* the 8-bit register is AH/CH/DH/BH (reg 4..7 with no REX prefix) */
	uint8_t has_imm;    /* a store of `imm` */
	uint64_t imm;       /* the stored immediate, already sign-extended to `width` */
	/* Memory operand: seg:[base + index*scale + disp] (RIP-relative: next RIP + disp; absolute: disp). */
	int8_t base;        /* -1: none */
	int8_t index;       /* -1: none */
	uint8_t scale;      /* 1, 2, 4, 8 */
	uint8_t rip_relative;
	uint8_t addr32;     /* 0x67: the effective address is truncated to 32 bits */
	uint8_t movdir64b;  /* the memory operand is the 64-byte source; `reg` holds the destination address */
	int64_t disp;
};

/*
 * Decode the instruction at `code` (`avail` readable bytes). Returns MMIO_OK
 * and fills `out`, or an enum mmio_decode_err.
 */
int mmio_decode(const uint8_t *code, size_t avail, struct mmio_insn *out);

/* The memory operand's address, given the registers (by enum mmio_gpr) and the instruction's own address. */
uint64_t mmio_effective_address(const struct mmio_insn *in, const uint64_t regs[16], uint64_t rip);

/* The value a store writes (`width` bytes, zero-extended into the result). Not for MOVDIR64B. */
uint64_t mmio_store_value(const struct mmio_insn *in, const uint64_t regs[16]);

/*
 * Write a loaded value (`width` bytes) into the destination register with
 * the architecture's rules: 32-bit destinations clear bits 63:32, 8- and
 * 16-bit ones keep the rest (AH..BH land in bits 15:8), MOVZX/MOVSX extend
 * first.
 */
void mmio_apply_load(const struct mmio_insn *in, uint64_t regs[16], uint64_t value);

#endif
