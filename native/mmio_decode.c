/* x86-64 MOV decoder for trapped MMIO (see mmio_decode.h). */
#include "mmio_decode.h"

#define REX_W 8
#define REX_R 4
#define REX_X 2
#define REX_B 1

struct cursor {
	const uint8_t *p;
	size_t avail;
	size_t pos;
};

static int take(struct cursor *c, size_t n, uint64_t *v, int sign)
{
	uint64_t x = 0;
	size_t i;

	if (c->pos + n > c->avail)
		return MMIO_ERR_TRUNCATED;
	for (i = 0; i < n; i++)
		x |= (uint64_t)c->p[c->pos + i] << (8 * i);
	c->pos += n;
	if (sign && n < 8 && (x >> (8 * n - 1)) & 1)
		x |= ~0ULL << (8 * n);
	*v = x;
	return MMIO_OK;
}

/* ModRM (+SIB, +disp): the memory operand. Register-direct forms are not memory accesses. */
static int decode_modrm(struct cursor *c, unsigned rex, struct mmio_insn *in, unsigned *reg_field)
{
	uint64_t b, d;
	unsigned mod, rm;
	int r;

	if ((r = take(c, 1, &b, 0)))
		return r;
	mod = (unsigned)b >> 6;
	*reg_field = (((unsigned)b >> 3) & 7) | (rex & REX_R ? 8 : 0);
	rm = (unsigned)b & 7;
	if (mod == 3)
		return MMIO_ERR_UNSUPPORTED;
	in->base = -1;
	in->index = -1;
	in->scale = 1;
	if (rm == 4) {
		unsigned base, index;

		if ((r = take(c, 1, &b, 0)))
			return r;
		in->scale = (uint8_t)(1u << ((unsigned)b >> 6));
		index = (((unsigned)b >> 3) & 7) | (rex & REX_X ? 8 : 0);
		base = ((unsigned)b & 7) | (rex & REX_B ? 8 : 0);
		if (index != 4)
			in->index = (int8_t)index;
		if ((base & 7) == 5 && mod == 0) {
			/* No base: disp32 only. */
			if ((r = take(c, 4, &d, 1)))
				return r;
			in->disp = (int64_t)d;
			return MMIO_OK;
		}
		in->base = (int8_t)base;
	} else if (rm == 5 && mod == 0) {
		if ((r = take(c, 4, &d, 1)))
			return r;
		in->rip_relative = 1;
		in->disp = (int64_t)d;
		return MMIO_OK;
	} else {
		in->base = (int8_t)(rm | (rex & REX_B ? 8 : 0));
	}
	if (mod == 1) {
		if ((r = take(c, 1, &d, 1)))
			return r;
		in->disp = (int64_t)d;
	} else if (mod == 2) {
		if ((r = take(c, 4, &d, 1)))
			return r;
		in->disp = (int64_t)d;
	}
	return MMIO_OK;
}

static void set_reg(struct mmio_insn *in, unsigned reg, unsigned width, unsigned rex_present)
{
	in->reg = (int8_t)reg;
	in->reg_width = (uint8_t)width;
	/* Without any REX prefix, byte registers 4..7 are AH, CH, DH, BH. */
	if (width == 1 && !rex_present && reg >= 4 && reg <= 7) {
		in->reg = (int8_t)(reg - 4);
		in->reg_high8 = 1;
	}
}

int mmio_decode(const uint8_t *code, size_t avail, struct mmio_insn *in)
{
	struct cursor c = { code, avail, 0 };
	unsigned opsize16 = 0, rex = 0, rex_present = 0, reg, opw;
	uint64_t b, v;
	int r;

	*in = (struct mmio_insn){ .reg = -1, .base = -1, .index = -1, .scale = 1 };
	/* Legacy prefixes (any order), then at most one REX right before the opcode. */
	for (;;) {
		if ((r = take(&c, 1, &b, 0)))
			return r;
		if (b == 0x66) {
			opsize16 = 1;
		} else if (b == 0x67) {
			in->addr32 = 1;
		} else if (b == 0x2e || b == 0x3e || b == 0x26 || b == 0x36) {
			/* CS/DS/ES/SS overrides: flat in 64-bit mode. */
		} else {
			break;
		}
		if (c.pos >= 15)
			return MMIO_ERR_UNSUPPORTED;
	}
	if ((b & 0xf0) == 0x40) {
		rex = (unsigned)b & 0xf;
		rex_present = 1;
		if ((r = take(&c, 1, &b, 0)))
			return r;
	}
	/* Operand size of the 16/32/64-bit forms: REX.W wins over 0x66. */
	opw = rex & REX_W ? 8 : opsize16 ? 2 : 4;

	switch (b) {
	case 0x88: /* MOV r/m8, r8 */
	case 0x8a: /* MOV r8, r/m8 */
		if ((r = decode_modrm(&c, rex, in, &reg)))
			return r;
		in->width = 1;
		in->dir = b == 0x88 ? MMIO_STORE : MMIO_LOAD;
		set_reg(in, reg, 1, rex_present);
		break;
	case 0x89: /* MOV r/m, r */
	case 0x8b: /* MOV r, r/m */
		if ((r = decode_modrm(&c, rex, in, &reg)))
			return r;
		in->width = (uint8_t)opw;
		in->dir = b == 0x89 ? MMIO_STORE : MMIO_LOAD;
		set_reg(in, reg, opw, rex_present);
		break;
	case 0x63: /* MOVSXD r64, r/m32 (only with REX.W: otherwise a plain 32-bit move) */
		if ((r = decode_modrm(&c, rex, in, &reg)))
			return r;
		in->dir = MMIO_LOAD;
		if (rex & REX_W) {
			in->width = 4;
			in->ext = MMIO_EXT_SIGN;
			set_reg(in, reg, 8, rex_present);
		} else {
			in->width = (uint8_t)opw;
			set_reg(in, reg, opw, rex_present);
		}
		break;
	case 0xc6: /* MOV r/m8, imm8 */
	case 0xc7: /* MOV r/m, imm16/imm32 (sign-extended to 64 with REX.W) */
		if ((r = decode_modrm(&c, rex, in, &reg)))
			return r;
		if ((reg & 7) != 0)
			return MMIO_ERR_UNSUPPORTED;
		in->dir = MMIO_STORE;
		in->has_imm = 1;
		in->width = b == 0xc6 ? 1 : (uint8_t)opw;
		if ((r = take(&c, in->width == 1 ? 1 : in->width == 2 ? 2 : 4, &v, 1)))
			return r;
		in->imm = in->width == 8 ? v : v & ((1ULL << (8 * in->width)) - 1);
		in->reg_width = in->width;
		break;
	case 0xa0: /* MOV AL, moffs */
	case 0xa1: /* MOV rAX, moffs */
	case 0xa2: /* MOV moffs, AL */
	case 0xa3: /* MOV moffs, rAX */
		if ((r = take(&c, in->addr32 ? 4 : 8, &v, 0)))
			return r;
		in->disp = (int64_t)v;
		in->width = (b & 1) ? (uint8_t)opw : 1;
		in->dir = b >= 0xa2 ? MMIO_STORE : MMIO_LOAD;
		set_reg(in, MMIO_RAX, in->width, rex_present);
		break;
	case 0x0f:
		if ((r = take(&c, 1, &b, 0)))
			return r;
		if (b == 0xb6 || b == 0xb7 || b == 0xbe || b == 0xbf) {
			/* MOVZX / MOVSX r, r/m8 or r/m16 */
			if ((r = decode_modrm(&c, rex, in, &reg)))
				return r;
			in->dir = MMIO_LOAD;
			in->width = (b & 1) ? 2 : 1;
			in->ext = b >= 0xbe ? MMIO_EXT_SIGN : MMIO_EXT_ZERO;
			set_reg(in, reg, opw, rex_present);
			break;
		}
		if (b == 0x38) {
			if ((r = take(&c, 1, &b, 0)))
				return r;
			if (b == 0xf8 && opsize16) {
				/* MOVDIR64B r64, m512: reg = destination address, r/m = source. */
				if ((r = decode_modrm(&c, rex, in, &reg)))
					return r;
				in->movdir64b = 1;
				in->dir = MMIO_STORE;
				in->width = 64;
				in->reg = (int8_t)reg;
				in->reg_width = 8;
				break;
			}
			if (b == 0xf9 && !opsize16) {
				/* MOVDIRI m32/m64, r32/r64 */
				if ((r = decode_modrm(&c, rex, in, &reg)))
					return r;
				in->dir = MMIO_STORE;
				in->width = rex & REX_W ? 8 : 4;
				set_reg(in, reg, in->width, rex_present);
				break;
			}
		}
		return MMIO_ERR_UNSUPPORTED;
	default:
		return MMIO_ERR_UNSUPPORTED;
	}
	if (c.pos > 15)
		return MMIO_ERR_UNSUPPORTED;
	in->len = (uint8_t)c.pos;
	return MMIO_OK;
}

uint64_t mmio_effective_address(const struct mmio_insn *in, const uint64_t regs[16], uint64_t rip)
{
	uint64_t a = (uint64_t)in->disp;

	if (in->rip_relative)
		a += rip + in->len;
	if (in->base >= 0)
		a += regs[in->base];
	if (in->index >= 0)
		a += regs[in->index] * in->scale;
	if (in->addr32)
		a &= 0xffffffffULL;
	return a;
}

static uint64_t mask(unsigned width)
{
	return width >= 8 ? ~0ULL : (1ULL << (8 * width)) - 1;
}

uint64_t mmio_store_value(const struct mmio_insn *in, const uint64_t regs[16])
{
	uint64_t v;

	if (in->has_imm)
		return in->imm & mask(in->width);
	v = regs[in->reg];
	if (in->reg_high8)
		v >>= 8;
	return v & mask(in->width);
}

void mmio_apply_load(const struct mmio_insn *in, uint64_t regs[16], uint64_t value)
{
	unsigned w = in->reg_width;
	uint64_t *r = &regs[in->reg];

	value &= mask(in->width);
	if (in->ext == MMIO_EXT_SIGN && in->width < 8 && (value >> (8 * in->width - 1)) & 1)
		value |= ~mask(in->width);
	if (w == 8) {
		*r = value;
	} else if (w == 4) {
		/* 32-bit destinations zero bits 63:32. */
		*r = value & 0xffffffffULL;
	} else if (in->reg_high8) {
		*r = (*r & ~0xff00ULL) | ((value & 0xff) << 8);
	} else {
		*r = (*r & ~mask(w)) | (value & mask(w));
	}
}
