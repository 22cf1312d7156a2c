/*
 * Tests for mmio_decode: every entry's bytes come from the assembler (the
 * instruction text below is assembled into .rodata between two labels), so
 * the expected length is the assembler's, and the fields are checked against
 * what the instruction means. Load semantics are checked against the CPU: each
 * SEM() function executes the instruction on normal memory and the decoder's
 * mmio_apply_load must produce the same register value.
 * Prints "ok N" and exits 0 when everything matches.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "mmio_decode.h"

#define INSN(name, text)                                                      \
	extern const uint8_t name[], name##_end[];                                \
	__asm__(".pushsection .rodata\n" #name ":\n\t" text "\n" #name "_end:\n\t.popsection\n")

struct expect {
	const char *text;
	const uint8_t *start, *end;
	int rc;
	uint8_t width, dir, ext, reg_width;
	int8_t reg;
	uint8_t high8, has_imm;
	uint64_t imm;
	int8_t base, index;
	uint8_t scale, rip, addr32, dir64;
	int64_t disp;
};

/* MMIO accessor forms of the -O0 selftest build (spec 06 §8.3). */
INSN(i_readb, "movb (%rax),%al");
INSN(i_readl, "movl (%rax),%eax");
INSN(i_readq, "movq (%rax),%rax");
INSN(i_writeb, "movb %al,(%rdx)");
INSN(i_writew, "movw %ax,(%rdx)");
INSN(i_writel, "movl %eax,(%rdx)");
INSN(i_writeq, "movq %rax,(%rdx)");
INSN(i_dir64b, "movdir64b (%rdx),%rax");
/* Optimised builds: any register, REX.R/REX.B, disp8/disp32, SIB. */
INSN(i_r12w, "movw %r12w,0x86(%rbp)");
INSN(i_r12b, "movb 0x84(%r12),%al");
INSN(i_ah, "movb (%rsi),%ah");
INSN(i_spl, "movb (%rsi),%spl");
INSN(i_bh, "movb %bh,(%rdi)");
INSN(i_r14d, "movl 0x10(%rsp),%r14d");
INSN(i_sib, "movq %r15,-8(%rbx,%rcx,8)");
INSN(i_nobase, "movl 0x12345678(,%r9,4),%edx");
INSN(i_rip, "movl 0x1000(%rip),%ecx");
INSN(i_r13d32, "movq %rax,0x7ff0(%r13)");
INSN(i_r13, "movl (%r13),%eax");
INSN(i_x_r10, "movq (%rax,%r10,2),%r11");
/* MOVZX / MOVSX / MOVSXD */
INSN(i_movzbl, "movzbl (%rdi),%eax");
INSN(i_movzwl, "movzwl 2(%rdi),%r8d");
INSN(i_movzbw, "movzbw (%rdi),%ax");
INSN(i_movsbq, "movsbq (%rdi),%rax");
INSN(i_movswl, "movswl (%rdi),%ecx");
INSN(i_movslq, "movslq (%rdi),%rdx");
/* MOV immediate stores */
INSN(i_imm8, "movb $0x5a,(%rdi)");
INSN(i_imm16, "movw $0x1234,(%rdi)");
INSN(i_imm32, "movl $0xdeadbeef,8(%rdi)");
INSN(i_imm64, "movq $-2,(%rdi)");
/* moffs, MOVDIRI, prefixes */
INSN(i_moffs_ld, "movabs 0x1122334455667788,%al");
INSN(i_moffs_st, "movabs %rax,0x1122334455667788");
INSN(i_moffs_ld32, "movabs 0x1122334455667788,%eax");
INSN(i_movdiri, "movdiri %eax,(%rdx)");
INSN(i_movdiri64, "movdiri %r9,8(%rdx)");
INSN(i_addr32, "movl (%eax),%ecx");
INSN(i_ds, "ds movq %rax,(%rdx)");
/* Not MMIO moves */
INSN(i_regreg, "movl %eax,%ebx");
INSN(i_add, "addl (%rax),%eax");
INSN(i_movsb, "rep movsb");
INSN(i_lock, "lock addl $1,(%rax)");

#define E(n, ...) { #n, n, n##_end, __VA_ARGS__ }
enum { L = MMIO_LOAD, S = MMIO_STORE, N = MMIO_EXT_NONE, Z = MMIO_EXT_ZERO, X = MMIO_EXT_SIGN };

static const struct expect table[] = {
	/* name      rc  w   dir ext rw  reg hi imm? imm   base idx sc rip a32 d64 disp */
	E(i_readb,   0, 1,  L, N, 1, 0,  0, 0, 0,          0,  -1, 1, 0, 0, 0, 0),
	E(i_readl,   0, 4,  L, N, 4, 0,  0, 0, 0,          0,  -1, 1, 0, 0, 0, 0),
	E(i_readq,   0, 8,  L, N, 8, 0,  0, 0, 0,          0,  -1, 1, 0, 0, 0, 0),
	E(i_writeb,  0, 1,  S, N, 1, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_writew,  0, 2,  S, N, 2, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_writel,  0, 4,  S, N, 4, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_writeq,  0, 8,  S, N, 8, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_dir64b,  0, 64, S, N, 8, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 1, 0),
	E(i_r12w,    0, 2,  S, N, 2, 12, 0, 0, 0,          5,  -1, 1, 0, 0, 0, 0x86),
	E(i_r12b,    0, 1,  L, N, 1, 0,  0, 0, 0,          12, -1, 1, 0, 0, 0, 0x84),
	E(i_ah,      0, 1,  L, N, 1, 0,  1, 0, 0,          6,  -1, 1, 0, 0, 0, 0),
	E(i_spl,     0, 1,  L, N, 1, 4,  0, 0, 0,          6,  -1, 1, 0, 0, 0, 0),
	E(i_bh,      0, 1,  S, N, 1, 3,  1, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_r14d,    0, 4,  L, N, 4, 14, 0, 0, 0,          4,  -1, 1, 0, 0, 0, 0x10),
	E(i_sib,     0, 8,  S, N, 8, 15, 0, 0, 0,          3,  1,  8, 0, 0, 0, -8),
	E(i_nobase,  0, 4,  L, N, 4, 2,  0, 0, 0,          -1, 9,  4, 0, 0, 0, 0x12345678),
	E(i_rip,     0, 4,  L, N, 4, 1,  0, 0, 0,          -1, -1, 1, 1, 0, 0, 0x1000),
	E(i_r13d32,  0, 8,  S, N, 8, 0,  0, 0, 0,          13, -1, 1, 0, 0, 0, 0x7ff0),
	E(i_r13,     0, 4,  L, N, 4, 0,  0, 0, 0,          13, -1, 1, 0, 0, 0, 0),
	E(i_x_r10,   0, 8,  L, N, 8, 11, 0, 0, 0,          0,  10, 2, 0, 0, 0, 0),
	E(i_movzbl,  0, 1,  L, Z, 4, 0,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_movzwl,  0, 2,  L, Z, 4, 8,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 2),
	E(i_movzbw,  0, 1,  L, Z, 2, 0,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_movsbq,  0, 1,  L, X, 8, 0,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_movswl,  0, 2,  L, X, 4, 1,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_movslq,  0, 4,  L, X, 8, 2,  0, 0, 0,          7,  -1, 1, 0, 0, 0, 0),
	E(i_imm8,    0, 1,  S, N, 1, -1, 0, 1, 0x5a,       7,  -1, 1, 0, 0, 0, 0),
	E(i_imm16,   0, 2,  S, N, 2, -1, 0, 1, 0x1234,     7,  -1, 1, 0, 0, 0, 0),
	E(i_imm32,   0, 4,  S, N, 4, -1, 0, 1, 0xdeadbeef, 7,  -1, 1, 0, 0, 0, 8),
	E(i_imm64,   0, 8,  S, N, 8, -1, 0, 1, 0xfffffffffffffffeULL, 7, -1, 1, 0, 0, 0, 0),
	E(i_moffs_ld, 0, 1, L, N, 1, 0,  0, 0, 0,          -1, -1, 1, 0, 0, 0, 0x1122334455667788LL),
	E(i_moffs_st, 0, 8, S, N, 8, 0,  0, 0, 0,          -1, -1, 1, 0, 0, 0, 0x1122334455667788LL),
	E(i_moffs_ld32, 0, 4, L, N, 4, 0, 0, 0, 0,         -1, -1, 1, 0, 0, 0, 0x1122334455667788LL),
	E(i_movdiri, 0, 4,  S, N, 4, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_movdiri64, 0, 8, S, N, 8, 9, 0, 0, 0,          2,  -1, 1, 0, 0, 0, 8),
	E(i_addr32,  0, 4,  L, N, 4, 1,  0, 0, 0,          0,  -1, 1, 0, 1, 0, 0),
	E(i_ds,      0, 8,  S, N, 8, 0,  0, 0, 0,          2,  -1, 1, 0, 0, 0, 0),
	E(i_regreg,  MMIO_ERR_UNSUPPORTED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
	E(i_add,     MMIO_ERR_UNSUPPORTED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
	E(i_movsb,   MMIO_ERR_UNSUPPORTED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
	E(i_lock,    MMIO_ERR_UNSUPPORTED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
};

static int failures, checks;

#define CHECK(cond, ...)                                                      \
	do {                                                                      \
		checks++;                                                             \
		if (!(cond)) {                                                        \
			failures++;                                                       \
			printf("FAIL %s: ", t->text);                                     \
			printf(__VA_ARGS__);                                              \
			printf("\n");                                                     \
		}                                                                     \
	} while (0)

static void check_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		const struct expect *t = &table[i];
		size_t len = (size_t)(t->end - t->start);
		struct mmio_insn in;
		int rc = mmio_decode(t->start, len, &in);

		CHECK(rc == t->rc, "rc %d, want %d", rc, t->rc);
		if (rc || t->rc)
			continue;
		CHECK(in.len == len, "len %u, assembler says %zu", in.len, len);
		CHECK(in.width == t->width, "width %u want %u", in.width, t->width);
		CHECK(in.dir == t->dir, "dir %u want %u", in.dir, t->dir);
		CHECK(in.ext == t->ext, "ext %u want %u", in.ext, t->ext);
		CHECK(in.reg_width == t->reg_width, "reg_width %u want %u", in.reg_width, t->reg_width);
		CHECK(in.reg == t->reg, "reg %d want %d", in.reg, t->reg);
		CHECK(in.reg_high8 == t->high8, "high8 %u want %u", in.reg_high8, t->high8);
		CHECK(in.has_imm == t->has_imm, "has_imm %u", in.has_imm);
		CHECK(in.imm == t->imm, "imm %#llx want %#llx", (unsigned long long)in.imm, (unsigned long long)t->imm);
		CHECK(in.base == t->base, "base %d want %d", in.base, t->base);
		CHECK(in.index == t->index, "index %d want %d", in.index, t->index);
		if (t->index >= 0)
			CHECK(in.scale == t->scale, "scale %u want %u", in.scale, t->scale);
		CHECK(in.rip_relative == t->rip, "rip %u", in.rip_relative);
		CHECK(in.addr32 == t->addr32, "addr32 %u", in.addr32);
		CHECK(in.movdir64b == t->dir64, "movdir64b %u", in.movdir64b);
		CHECK(in.disp == t->disp, "disp %lld want %lld", (long long)in.disp, (long long)t->disp);
		/* Every proper prefix of the bytes is truncated. */
		for (size_t n = 0; n < len; n++) {
			struct mmio_insn tmp;
			int r = mmio_decode(t->start, n, &tmp);
			CHECK(r == MMIO_ERR_TRUNCATED, "%zu of %zu bytes: rc %d, want truncated", n, len, r);
		}
	}
}

/* Effective addresses and store values from a register file. */
static void check_operands(void)
{
	uint64_t regs[16];
	struct mmio_insn in;
	const struct expect *t = &table[0];
	int i;

	for (i = 0; i < 16; i++)
		regs[i] = 0x1000u * (i + 1);
	mmio_decode(i_sib, (size_t)(i_sib_end - i_sib), &in);
	CHECK(mmio_effective_address(&in, regs, 0) == regs[3] + regs[1] * 8 - 8, "sib address");
	regs[15] = 0x0123456789abcdefULL;
	CHECK(mmio_store_value(&in, regs) == 0x0123456789abcdefULL, "sib store value");
	mmio_decode(i_rip, (size_t)(i_rip_end - i_rip), &in);
	CHECK(mmio_effective_address(&in, regs, 0x400000) == 0x400000u + in.len + 0x1000u, "rip-relative address");
	mmio_decode(i_bh, (size_t)(i_bh_end - i_bh), &in);
	regs[3] = 0x4455;
	CHECK(mmio_store_value(&in, regs) == 0x44, "BH store value");
	mmio_decode(i_writew, (size_t)(i_writew_end - i_writew), &in);
	regs[0] = 0xaaaabbbbccccddddULL;
	CHECK(mmio_store_value(&in, regs) == 0xdddd, "16-bit store value");
	mmio_decode(i_imm64, (size_t)(i_imm64_end - i_imm64), &in);
	CHECK(mmio_store_value(&in, regs) == 0xfffffffffffffffeULL, "sign-extended imm32 store");
	mmio_decode(i_addr32, (size_t)(i_addr32_end - i_addr32), &in);
	regs[0] = 0xffffffff00001234ULL;
	CHECK(mmio_effective_address(&in, regs, 0) == 0x1234, "addr32 truncates");
	mmio_decode(i_dir64b, (size_t)(i_dir64b_end - i_dir64b), &in);
	CHECK(mmio_effective_address(&in, regs, 0) == regs[2], "movdir64b source is the r/m operand");
	CHECK(in.reg == MMIO_RAX, "movdir64b destination register");
}

/*
 * CPU ground truth for loads: each function sets its destination register to
 * the first argument, executes the instruction on *arg2 and returns the
 * register. The decoder applies the same value and must agree.
 */
#define SEM(name, reg, text)                                                  \
	extern uint64_t name(uint64_t preset, const void *mem);                   \
	extern const uint8_t name##_insn[], name##_insn_end[];                    \
	__asm__(".text\n.globl " #name "\n" #name ":\n\tmov %rdi,%" reg "\n"     \
		#name "_insn:\n\t" text "\n" #name "_insn_end:\n\tmov %" reg ",%rax\n\tret\n")

SEM(s_ah, "rax", "movb (%rsi),%ah");
SEM(s_al, "rax", "movb (%rsi),%al");
SEM(s_ax, "rax", "movw (%rsi),%ax");
SEM(s_eax, "rax", "movl (%rsi),%eax");
SEM(s_rax, "rax", "movq (%rsi),%rax");
SEM(s_dil, "rdi", "movb (%rsi),%dil");
SEM(s_r9b, "r9", "movb (%rsi),%r9b");
SEM(s_r10w, "r10", "movw 2(%rsi),%r10w");
SEM(s_movzbl, "rcx", "movzbl (%rsi),%ecx");
SEM(s_movzbw, "rcx", "movzbw (%rsi),%cx");
SEM(s_movsbw, "rdx", "movsbw (%rsi),%dx");
SEM(s_movsbq, "rdx", "movsbq (%rsi),%rdx");
SEM(s_movswl, "r11", "movswl (%rsi),%r11d");
SEM(s_movslq, "r8", "movslq (%rsi),%r8");
SEM(s_movsxd32, "r8", ".byte 0x44, 0x63, 0x06"); /* movsxd without REX.W: a 32-bit move */

static void check_semantics(void)
{
	static const struct {
		const char *text;
		uint64_t (*fn)(uint64_t, const void *);
		const uint8_t *insn, *end;
	} sem[] = {
#define S_(n) { #n, n, n##_insn, n##_insn_end }
		S_(s_ah), S_(s_al), S_(s_ax), S_(s_eax), S_(s_rax), S_(s_dil), S_(s_r9b), S_(s_r10w), S_(s_movzbl),
		S_(s_movzbw), S_(s_movsbw), S_(s_movsbq), S_(s_movswl), S_(s_movslq), S_(s_movsxd32),
	};
	static const uint64_t presets[] = { 0x1111111111111111ULL, 0, ~0ULL };
	static const uint8_t mems[][8] = {
		{ 0x81, 0x92, 0xa3, 0xb4, 0xc5, 0xd6, 0xe7, 0xf8 },
		{ 0x7f, 0x01, 0x7f, 0x02, 0x03, 0x04, 0x05, 0x06 },
	};
	size_t i, j, k;

	for (i = 0; i < sizeof(sem) / sizeof(sem[0]); i++) {
		struct mmio_insn in;
		const struct expect tt = { .text = sem[i].text }, *t = &tt;
		int rc = mmio_decode(sem[i].insn, (size_t)(sem[i].end - sem[i].insn), &in);

		CHECK(rc == 0 && in.dir == MMIO_LOAD, "decode rc %d", rc);
		if (rc)
			continue;
		for (j = 0; j < 3; j++) {
			for (k = 0; k < 2; k++) {
				uint64_t regs[16] = { 0 }, value = 0, cpu;
				unsigned b;
				const uint8_t *at = mems[k] + (in.disp > 0 ? in.disp : 0);

				regs[in.reg] = presets[j];
				for (b = 0; b < in.width; b++)
					value |= (uint64_t)at[b] << (8 * b);
				cpu = sem[i].fn(presets[j], mems[k]);
				mmio_apply_load(&in, regs, value);
				CHECK(regs[in.reg] == cpu, "preset %#llx: decoder %#llx, CPU %#llx",
				      (unsigned long long)presets[j], (unsigned long long)regs[in.reg],
				      (unsigned long long)cpu);
			}
		}
	}
}

int main(void)
{
	check_table();
	check_operands();
	check_semantics();
	if (failures) {
		printf("%d of %d checks failed\n", failures, checks);
		return 1;
	}
	printf("ok %d\n", checks);
	return 0;
}
