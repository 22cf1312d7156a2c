/* golden: a seeded, struct-aware random-call program for /dev/iommu.
 *
 *   golden SEED CALLS [-v]       one seed
 *   golden -m CALLS SEED...      several seeds, each in a fresh child process,
 *                                each introduced by a line "== seed N"
 *
 * Every request of the ABI profile the program was built for (the generated
 * iommufd_uapi_tables.h: `node dist/uapi/ctables.js DIR PROFILE`), every
 * IOMMU_TEST_CMD op, the VFIO type1 compat requests, the VFS-level ioctls, and
 * read/write/poll/mmap/close on the files iommufd hands out, with fields filled
 * according to what each holds (IDs from the objects made so far, pointers into
 * readable, read-only, absent memory, sizes around the struct's, flags from the
 * profile's enum values plus stray bits). One line per call:
 *
 *   INDEX NAME rc=RC e=ERRNO [a:OFF=HEX] [s:OFF+LEN=HEX|#HASH] [m:OFF+LEN=#HASH]
 *
 * a: the bytes of the argument struct that the call changed, s: of the scratch
 * buffer (out arrays, records read, driver data), m: of the mapped user memory.
 * Values that depend on the environment are masked: fds the kernel returns are
 * printed as their ordinal in this run (f1, f2...), pointers never appear, user
 * memory sits at fixed addresses. The same program built statically runs on a
 * real kernel (oracle-vm) and dynamically through the shim; their outputs must
 * be identical. Fault injection is never armed. CAP_SYS_RESOURCE is dropped
 * first, so that a container without it and a root VM with it behave the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "iommufd_uapi_tables.h"

#define PAGE 4096UL
#define MEM_BASE ((char *)0x40000000UL) /* user memory to map: MEM_PAGES, then a hole */
#define MEM_PAGES 64
#define SCR_BASE ((char *)0x41000000UL) /* scratch: SCR_PAGES rw, one read-only page, hole */
#define SCR_PAGES 4
#define SCR_LEN (SCR_PAGES * PAGE)
#define ARG_BASE ((char *)0x42000000UL) /* argument page, then a hole */
#define HOLE ((char *)0x43000000UL)     /* never mapped */

static int verbose;
static const char *force_op; /* the next TEST_CMD's op (by name), when set */
/* Field values the next call must carry (a step towards deeper state), and a clean call. */
struct force { const char *field; uint64_t v; };
static struct force forced[4];
static int nforced, force_clean;

/* ---- PRNG (splitmix64) ------------------------------------------------------- */
static uint64_t rs;
static uint64_t rnd(void)
{
	uint64_t z = (rs += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(unsigned pct) { return below(100) < pct; }
/* Half of the calls are clean (every field plausible), so that state builds up; the rest carry noise. */
static int clean;
static int noise(unsigned pct) { return chance(pct) && !clean; }

/* ---- table lookups ----------------------------------------------------------- */
static int gconst(const char *name, uint64_t *v)
{
	for (size_t i = 0; i < GT_N(gt_consts); i++)
		if (!strcmp(gt_consts[i].name, name)) { *v = gt_consts[i].value; return 1; }
	return 0;
}
static uint64_t gconst_or(const char *name, uint64_t dflt)
{
	uint64_t v;
	return gconst(name, &v) ? v : dflt;
}
static const struct gt_ioctl *gioctl(const char *name)
{
	for (size_t i = 0; i < GT_N(gt_ioctls); i++)
		if (!strcmp(gt_ioctls[i].name, name)) return &gt_ioctls[i];
	return NULL;
}

/* ---- pools of what the kernel handed out ------------------------------------- */
#define POOL_MAX 48
/* v: the ID, fd or IOVA; len, uva: for IOVAs, the length mapped there and the user address behind it. */
struct pool { uint64_t v[POOL_MAX]; uint64_t len[POOL_MAX]; uint64_t uva[POOL_MAX]; int n; };
static struct pool pools[GT_NPOOLS];

static void pool_add3(int p, uint64_t v, uint64_t len, uint64_t uva)
{
	struct pool *q = &pools[p];
	int i = q->n < POOL_MAX ? q->n++ : (int)below(POOL_MAX);
	q->v[i] = v;
	q->len[i] = len;
	q->uva[i] = uva;
}
static void pool_add(int p, uint64_t v, uint64_t len) { pool_add3(p, v, len, 0); }
static int pool_pick3(int p, uint64_t *v, uint64_t *len, uint64_t *uva)
{
	struct pool *q = &pools[p];
	if (!q->n) return 0;
	int i = (int)below(q->n);
	*v = q->v[i];
	if (len) *len = q->len[i];
	if (uva) *uva = q->uva[i];
	return 1;
}
static int pool_pick(int p, uint64_t *v, uint64_t *len) { return pool_pick3(p, v, len, NULL); }
static void pool_del(int p, uint64_t v)
{
	struct pool *q = &pools[p];
	for (int i = 0; i < q->n; i++)
		if (q->v[i] == v) { q->v[i] = q->v[q->n - 1]; q->len[i] = q->len[q->n - 1]; q->n--; i--; }
}
static int is_fd_pool(int p) { return p >= GT_P_FD_FAULT && p <= GT_P_FD_ANY; }

/* An object ID of kind p (PT: an IOAS or a HWPT; ANY: whatever exists). */
static uint64_t pick_id(int p)
{
	uint64_t v;
	if (noise(8)) return 0;
	if (noise(8)) return below(24);
	if (p == GT_P_PT) p = chance(50) ? GT_P_IOAS : GT_P_HWPT;
	if (p == GT_P_ANY || p == GT_P_NONE) p = GT_P_IOAS + (int)below(GT_P_PARENT - GT_P_IOAS + 1);
	if (pool_pick(p, &v, NULL)) return v;
	for (int i = 0; i < 4; i++)
		if (pool_pick(GT_P_IOAS + (int)below(GT_P_PARENT - GT_P_IOAS + 1), &v, NULL)) return v;
	return 1 + below(8);
}

/* fds: the kernel's numbers are kept, printed as ordinals. */
struct fdent { int fd; int ord; int pool; };
static struct fdent fds[64];
static int nfds, next_ord;
static int iommufd = -1;

static int fd_ord(int fd)
{
	if (fd == iommufd) return 0;
	for (int i = 0; i < nfds; i++)
		if (fds[i].fd == fd) return fds[i].ord;
	return -1;
}
static int fd_add(int fd, int pool)
{
	for (int i = 0; i < nfds; i++)
		if (fds[i].fd == fd) { fds[i].pool = pool; fds[i].ord = ++next_ord; return fds[i].ord; }
	if (nfds == 64) return -1;
	fds[nfds++] = (struct fdent){ fd, ++next_ord, pool };
	pool_add(pool, (uint64_t)fd, 0);
	pool_add(GT_P_FD_ANY, (uint64_t)fd, 0);
	return next_ord;
}
static void fd_forget(int fd)
{
	for (int i = 0; i < nfds; i++)
		if (fds[i].fd == fd) {
			pool_del(fds[i].pool, (uint64_t)fd);
			pool_del(GT_P_FD_ANY, (uint64_t)fd);
			fds[i] = fds[--nfds];
			return;
		}
}
static int pick_fd(int p)
{
	uint64_t v;
	if (noise(5)) return -1;
	if (noise(3)) return 1000;
	if (pool_pick(p, &v, NULL)) return (int)v;
	if (pool_pick(GT_P_FD_ANY, &v, NULL)) return (int)v;
	return iommufd;
}

/* ---- memory ------------------------------------------------------------------- */
static void *map_fixed(void *at, size_t len, int prot)
{
	void *p = mmap(at, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != at) {
		fprintf(stderr, "golden: cannot map %zu bytes at %p: %s\n", len, at, strerror(errno));
		exit(2);
	}
	return p;
}

static void fill_pages(char *p, size_t len, uint64_t tag)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t w = tag * 0x100000001b3ULL + i;
		memcpy(p + i, &w, 8);
	}
}

/* Payload-like words: small numbers, selftest constants, IOVAs, noise. */
static uint32_t payload_word(void)
{
	static const char *const k[] = { "IOMMU_TEST_IOTLB_DEFAULT", "IOMMU_TEST_DEV_CACHE_DEFAULT",
		"IOMMU_TEST_INVALIDATE_FLAG_ALL", "IOMMU_HWPT_DATA_SELFTEST" };
	unsigned r = (unsigned)below(100);
	if (r < 45) return (uint32_t)below(4);
	if (r < 60) return 0;
	if (r < 70) return (uint32_t)(0x1000000 + PAGE * below(256));
	if (r < 80) return (uint32_t)gconst_or(k[below(4)], 0);
	return (uint32_t)rnd();
}
static void fill_scratch(void)
{
	for (size_t i = 0; i < SCR_LEN; i += 4) {
		uint32_t w = payload_word();
		memcpy(SCR_BASE + i, &w, 4);
	}
}

/* A pointer for field `name`: mostly valid memory of the right kind, sometimes not. */
static uint64_t pick_ptr(const char *name, const char *sname)
{
	int to_mem = !strcmp(name, "user_va") || !strcmp(name, "vaddr") ||
		(!strcmp(name, "uptr") && strcmp(sname, "dirty"));
	unsigned r = clean ? 100 : (unsigned)below(100);
	if (r < 5) return 0;
	if (r < 9) return (uint64_t)(uintptr_t)HOLE + PAGE * below(4);
	if (r < 12) return (uint64_t)(uintptr_t)(SCR_BASE + SCR_LEN); /* read-only page */
	if (r < 14) return (uint64_t)(uintptr_t)(SCR_BASE + SCR_LEN + PAGE - 8 * below(4)); /* runs into the hole */
	if (r < 17) return (uint64_t)(uintptr_t)(SCR_BASE + SCR_LEN - 8 * below(8)); /* runs into the read-only page */
	if (r < 18) return rnd();
	if (to_mem) {
		uint64_t off = PAGE * below(MEM_PAGES);
		if (noise(10)) off += 8 * below(512);
		return (uint64_t)(uintptr_t)MEM_BASE + off;
	}
	return (uint64_t)(uintptr_t)SCR_BASE + (chance(70) ? 0 : 8 * below(SCR_LEN / 8));
}

/* ---- field values ---------------------------------------------------------------- */
static uint64_t wmask(unsigned width) { return width >= 8 ? ~0ULL : (1ULL << (8 * width)) - 1; }

static uint64_t pick_len(const char *name, unsigned width)
{
	unsigned r = (unsigned)below(clean ? 65 : 100);
	if (!strcmp(name, "length") || !strcmp(name, "size")) {
		if (r < 65) return PAGE * (1 + below(16));
		if (r < 70) return 0;
		if (r < 76) return 2048 * (1 + below(16));
		if (r < 82) return 1 + below(8192);
		if (r < 88) { static const uint64_t big[] = { 0xfffffffffffff000ULL, 1ULL << 63, ~0ULL, 1ULL << 32,
			16ULL << 20, (16ULL << 20) + PAGE }; return big[below(6)] & wmask(width); }
		if (r < 94) return PAGE * (1 + below(MEM_PAGES + 8));
		return rnd() & wmask(width);
	}
	if (!strcmp(name, "page_size")) {
		static const uint64_t ps[] = { 4096, 4096, 4096, 2048, 8192, 0, 3, 1 << 21, 65536 };
		return r < 90 ? ps[below(9)] : rnd();
	}
	if (!strcmp(name, "veventq_depth")) {
		static const uint64_t d[] = { 0, 1, 2, 4, 8, 1 << 19, (1 << 19) + 1, 0xffffffff };
		return r < 90 ? d[below(8)] : rnd() & wmask(width);
	}
	if (!strcmp(name, "data_len") || !strcmp(name, "entry_len")) {
		static const uint64_t l[] = { 0, 4, 8, 12, 16, 24, 32, 48, 64, 4096, 3 };
		return r < 85 ? l[below(11)] : rnd() & wmask(width);
	}
	if (r < 80) return below(5);
	if (r < 90) return below(4096);
	return rnd() & wmask(width);
}

static uint64_t pick_iova(void)
{
	unsigned r = (unsigned)below(clean ? 75 : 100);
	uint64_t v;
	if (r < 55) return 0x1000000 + PAGE * below(256);
	if (r < 75 && pool_pick(GT_P_IOVA, &v, NULL)) return v + (chance(20) ? PAGE * below(4) : 0);
	if (r < 82) return 0;
	if (r < 88) return 0x1000000 + 2048 * below(512);
	if (r < 93) { static const uint64_t e[] = { 0x7ffff000, 0x80000000, 0xfffffffffffff000ULL, ~0ULL, 0xffffff000 };
		return e[below(5)]; }
	return rnd();
}

static uint64_t pick_enum(int idx, int flags, unsigned width)
{
	if (idx >= 0 && gt_enums[idx].name && gt_enums[idx].n) {
		const struct gt_enum *e = &gt_enums[idx];
		if (!flags || !e->flags) {
			if (e->nmock && chance(clean ? 75 : 30)) return e->mock[below(e->nmock)];
			if (clean || chance(88)) return e->values[below(e->n)];
		} else {
			uint64_t v = 0;
			unsigned r = (unsigned)below(clean ? 90 : 100);
			if (r < 15) return 0;
			if (r < 90) {
				for (uint32_t i = 0; i < e->n; i++)
					if (chance(clean ? 45 : 35)) v |= e->values[i];
				return v;
			}
		}
	} else if (flags) {
		unsigned r = (unsigned)below(100);
		if (r < 70 || clean) return 0;
		if (r < 85) return below(8);
	}
	if (chance(50)) return below(16);
	if (chance(30)) return 1ULL << below(8 * width);
	return rnd() & wmask(width);
}

static uint64_t pick_value(const struct gt_field *f, const char *sname)
{
	unsigned w = f->width;
	if ((f->flags & GT_OUT) && !strncmp(f->name, "out_", 4)) {
		unsigned r = (unsigned)below(clean ? 75 : 100);
		if (r < 75) return 0;
		if (r < 90) return below(16);
		return rnd() & wmask(w);
	}
	switch (f->kind) {
	case GT_K_ID:
		/* A vIOMMU sits on a nesting parent; a nested HWPT on a parent or a vIOMMU. */
		if (!strcmp(sname, "iommu_viommu_alloc") && !strcmp(f->name, "hwpt_id") && pools[GT_P_PARENT].n && chance(70))
			return pick_id(GT_P_PARENT) & wmask(w);
		if (!strcmp(sname, "iommu_hwpt_alloc") && !strcmp(f->name, "pt_id") && chance(40))
			return pick_id(chance(50) && pools[GT_P_VIOMMU].n ? GT_P_VIOMMU : GT_P_PARENT) & wmask(w);
		return pick_id(f->pool) & wmask(w);
	case GT_K_PTR: return pick_ptr(f->name, sname);
	case GT_K_LEN: return pick_len(f->name, w) & wmask(w);
	case GT_K_IOVA: return pick_iova() & wmask(w);
	case GT_K_FLAGS: return pick_enum(f->enum_idx, 1, w) & wmask(w);
	case GT_K_ENUM: return pick_enum(f->enum_idx, 0, w) & wmask(w);
	case GT_K_RSVD: return !noise(8) ? 0 : (chance(50) ? 1 : rnd()) & wmask(w);
	case GT_K_FD: return (uint64_t)(uint32_t)pick_fd(!strcmp(f->name, "fd") ? GT_P_FD_MEMFD : GT_P_FD_ANY);
	case GT_K_SMALL: return (!noise(15) ? below(5) : rnd()) & wmask(w);
	default: {
		unsigned r = (unsigned)below(clean ? 65 : 100);
		if (r < 45) return below(8);
		if (r < 65) return 0;
		return rnd() & wmask(w);
	}
	}
}

static void put(char *b, unsigned off, unsigned width, uint64_t v)
{
	memcpy(b + off, &v, width); /* little endian */
}
static uint64_t get(const char *b, unsigned off, unsigned width)
{
	uint64_t v = 0;
	memcpy(&v, b + off, width);
	return v;
}

static void fill_struct(char *b, const struct gt_struct *st)
{
	for (uint32_t i = 0; i < st->nfields; i++) {
		const struct gt_field *f = &st->fields[i];
		if (f->kind == GT_K_SIZE) continue;
		unsigned n = f->count ? f->count : 1;
		for (unsigned k = 0; k < n; k++) put(b, f->offset + k * f->width, f->width, pick_value(f, st->name));
	}
	/* Clean calls keep driver data coherent: no data for type NONE, else one payload's size. */
	const struct gt_field *ft = NULL, *fdl = NULL, *fdu = NULL, *fel = NULL;
	for (uint32_t i = 0; i < st->nfields; i++) {
		const struct gt_field *f = &st->fields[i];
		if (!strcmp(f->name, "data_type")) ft = f;
		if (!strcmp(f->name, "data_len")) fdl = f;
		if (!strcmp(f->name, "data_uptr")) fdu = f;
		if (!strcmp(f->name, "entry_len")) fel = f;
	}
	if (clean && fdl && !(fdl->flags & GT_OUT)) {
		uint32_t psz = gt_payloads[below(GT_N(gt_payloads))]->size;
		if (ft && get(b, ft->offset, ft->width) == 0 && chance(70)) {
			put(b, fdl->offset, fdl->width, 0);
			if (fdu) put(b, fdu->offset, fdu->width, 0);
		} else {
			put(b, fdl->offset, fdl->width, psz);
		}
	}
	if (clean && fel) put(b, fel->offset, fel->width, gt_payloads[below(GT_N(gt_payloads))]->size);
	/* Often aim at something already mapped: an (iova, length) the kernel reported. */
	const struct gt_field *fi = NULL, *fl = NULL, *fu = NULL;
	for (uint32_t i = 0; i < st->nfields; i++) {
		const struct gt_field *f = &st->fields[i];
		if (f->kind == GT_K_IOVA && (!strcmp(f->name, "iova") || !strcmp(f->name, "src_iova"))) fi = f;
		if (f->kind == GT_K_LEN && (!strcmp(f->name, "length") || (!strcmp(f->name, "size") && f->offset)))
			fl = f;
		if (!strcmp(f->name, "uptr") && strcmp(st->name, "dirty")) fu = f;
	}
	uint64_t iova, len, uva;
	if (fi && fl && chance(clean ? 70 : 40) && pool_pick3(GT_P_IOVA, &iova, &len, &uva)) {
		if (chance(25)) {
			uint64_t pages = len / PAGE;
			if (pages > 1) { uint64_t k = below(pages); iova += PAGE * k; uva += PAGE * k; len = PAGE; }
		}
		put(b, fi->offset, fi->width, iova);
		put(b, fl->offset, fl->width, len & wmask(fl->width));
		/* the user memory behind it, for the checks that compare against it */
		if (fu && uva && chance(clean ? 85 : 50)) put(b, fu->offset, fu->width, uva);
	}
}

/* ---- output ------------------------------------------------------------------------ */
static uint64_t fnv(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/* Append " TAG:OFF+LEN=..." for the range where `pre` and `post` differ (hex up to 32 bytes). */
static void diff(char *line, size_t cap, const char *tag, const unsigned char *pre, const unsigned char *post, size_t n,
		 int hexok)
{
	size_t a = 0, z = n;
	while (a < n && pre[a] == post[a]) a++;
	if (a == n) return;
	while (z > a && pre[z - 1] == post[z - 1]) z--;
	size_t l = strlen(line);
	if (hexok && z - a <= 32) {
		l += snprintf(line + l, cap - l, " %s:%zu=", tag, a);
		for (size_t i = a; i < z && l + 3 < cap; i++) l += snprintf(line + l, cap - l, "%02x", post[i]);
	} else {
		snprintf(line + l, cap - l, " %s:%zu+%zu=#%016" PRIx64, tag, a, z - a, fnv(post + a, z - a));
	}
}

static char line[1024];
static unsigned char scr_pre[SCR_LEN];
static unsigned char arg_pre[PAGE];
static unsigned char *mem_pre, *mem_post;
static unsigned char mem_mapped[MEM_PAGES]; /* which pages of MEM_BASE the program has mapped now */

/* The mapped user memory, page by page (absent pages read as zeros). */
static void mem_snapshot(unsigned char *to)
{
	for (unsigned i = 0; i < MEM_PAGES; i++) {
		if (mem_mapped[i]) memcpy(to + i * PAGE, MEM_BASE + i * PAGE, PAGE);
		else memset(to + i * PAGE, 0, PAGE);
	}
}
static long call_no;

static void emit(const char *name, long rc, int err)
{
	printf("%ld %s rc=%ld e=%d%s\n", call_no, name, rc, rc < 0 ? err : 0, line);
}

/* ---- the calls ------------------------------------------------------------------- */
struct op_pool { const char *op; int pool; };
/* What the `id` of each selftest op names (selftest.c's dispatch). */
static const struct op_pool op_id_pools[] = {
	{ "IOMMU_TEST_OP_ADD_RESERVED", GT_P_IOAS }, { "IOMMU_TEST_OP_MOCK_DOMAIN", GT_P_IOAS },
	{ "IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS", GT_P_IOAS }, { "IOMMU_TEST_OP_MD_CHECK_MAP", GT_P_PT },
	{ "IOMMU_TEST_OP_MD_CHECK_REFS", GT_P_ANY }, { "IOMMU_TEST_OP_CREATE_ACCESS", GT_P_IOAS },
	{ "IOMMU_TEST_OP_DESTROY_ACCESS_PAGES", GT_P_FD_ACCESS }, { "IOMMU_TEST_OP_ACCESS_PAGES", GT_P_FD_ACCESS },
	{ "IOMMU_TEST_OP_ACCESS_RW", GT_P_FD_ACCESS }, { "IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT", GT_P_ANY },
	{ "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE", GT_P_STDEV }, { "IOMMU_TEST_OP_ACCESS_REPLACE_IOAS", GT_P_FD_ACCESS },
	{ "IOMMU_TEST_OP_DIRTY", GT_P_HWPT }, { "IOMMU_TEST_OP_MD_CHECK_IOTLB", GT_P_HWPT },
	{ "IOMMU_TEST_OP_TRIGGER_IOPF", GT_P_ANY }, { "IOMMU_TEST_OP_DEV_CHECK_CACHE", GT_P_DEV },
	{ "IOMMU_TEST_OP_TRIGGER_VEVENT", GT_P_ANY }, { "IOMMU_TEST_OP_PASID_ATTACH", GT_P_STDEV },
	{ "IOMMU_TEST_OP_PASID_REPLACE", GT_P_STDEV }, { "IOMMU_TEST_OP_PASID_DETACH", GT_P_STDEV },
	{ "IOMMU_TEST_OP_PASID_CHECK_HWPT", GT_P_STDEV }, { "IOMMU_TEST_OP_DMABUF_GET", GT_P_ANY },
	{ "IOMMU_TEST_OP_DMABUF_REVOKE", GT_P_ANY },
};

/* Register what a successful call wrote back; fds become ordinals in `post`. */
static void harvest(const struct gt_struct *st, char *post, const char *pre, uint32_t size, long rc)
{
	if (!st) return;
	for (uint32_t i = 0; i < st->nfields; i++) {
		const struct gt_field *f = &st->fields[i];
		if (!(f->flags & GT_OUT) || !f->out_pool || f->offset + f->width > size) continue;
		uint64_t v = get(post, f->offset, f->width);
		if (is_fd_pool(f->out_pool)) {
			if (rc == 0 && v != get(pre, f->offset, f->width)) {
				int ord = fd_add((int)v, f->out_pool);
				put(post, f->offset, f->width, (uint64_t)ord);
			} else if (v != get(pre, f->offset, f->width)) {
				put(post, f->offset, f->width, 0xfdfdfdfd);
			}
			continue;
		}
		if (rc != 0) continue;
		uint64_t len = 0, uva = 0;
		if (f->out_pool == GT_P_IOVA) {
			for (uint32_t j = 0; j < st->nfields; j++) {
				if (!strcmp(st->fields[j].name, "length") || (!strcmp(st->fields[j].name, "size") && st->fields[j].offset))
					len = get(post, st->fields[j].offset, st->fields[j].width);
				if (!strcmp(st->fields[j].name, "user_va"))
					uva = get(post, st->fields[j].offset, st->fields[j].width);
			}
		}
		pool_add3(f->out_pool, v, len, uva);
		if (!strcmp(st->name, "iommu_hwpt_alloc") && (get(post, 4, 4) & 1)) pool_add(GT_P_PARENT, v, 0);
	}
}

static void do_ioctl(const struct gt_ioctl *io)
{
	char *arg;
	uint32_t size = 0, ssz = 0, alloc;
	const struct gt_struct *view = NULL;
	const char *opname = NULL;
	unsigned long req = io->request;
	long rc;
	int err, fd = iommufd, check_mem = 0;
	char name[96];

	fill_scratch();
	memset(ARG_BASE, 0, PAGE);
	clean = force_clean || chance(50);
	force_clean = 0;
	if (io->st) {
		ssz = io->st->size;
		unsigned r = clean ? 0 : (unsigned)below(100);
		uint32_t min = io->min_size;
		if (r < 66) size = ssz;
		else if (r < 74) size = min + (uint32_t)below(ssz - min + 1);
		else if (r < 79) size = (uint32_t)below(min + 1);
		else if (r < 89) size = ssz + 8 * (1 + (uint32_t)below(8));
		else if (r < 94) size = ssz + 1 + (uint32_t)below(64);
		else if (r < 97) size = PAGE + (uint32_t)below(2 * PAGE);
		else size = (uint32_t)rnd();
		alloc = size < PAGE ? (size < ssz ? ssz : size) : PAGE;
		if (alloc > PAGE) alloc = PAGE;
		arg = !noise(15) ? ARG_BASE : ARG_BASE + ((PAGE - alloc) & ~7UL);
		fill_struct(arg, io->st);
		if (!strcmp(io->name, "IOMMU_TEST_CMD")) {
			const struct gt_test_op *op = NULL;
			uint32_t opv;
			if (force_op) {
				for (size_t i = 0; i < GT_N(gt_test_ops); i++)
					if (!strcmp(gt_test_ops[i].name, force_op)) op = &gt_test_ops[i];
				force_op = NULL;
			}
			if (op || (!noise(5) && GT_N(gt_test_ops))) {
				if (!op) op = &gt_test_ops[below(GT_N(gt_test_ops))];
				opv = op->op;
			} else {
				static const uint32_t bad[] = { 0, 99, 0xffffffff, 24, 30 };
				opv = bad[below(5)];
			}
			put(arg, 4, 4, opv);
			int pool = GT_P_ANY;
			if (op) {
				opname = op->name + strlen("IOMMU_TEST_OP_");
				for (size_t i = 0; i < GT_N(op_id_pools); i++)
					if (!strcmp(op_id_pools[i].op, op->name)) pool = op_id_pools[i].pool;
				view = op->view;
				if (view) fill_struct(arg, view);
				check_mem = !strcmp(opname, "ACCESS_RW");
			}
			put(arg, 8, 4, is_fd_pool(pool) ? (uint64_t)(uint32_t)pick_fd(pool) : pick_id(pool));
		}
		for (int i = 0; i < nforced; i++)
			for (uint32_t j = 0; j < io->st->nfields; j++)
				if (!strcmp(io->st->fields[j].name, forced[i].field))
					put(arg, io->st->fields[j].offset, io->st->fields[j].width, forced[i].v);
		nforced = 0;
		/* The tail past the struct: zero, or (sometimes) not. */
		if (size > ssz && noise(40)) {
			uint32_t end = size < alloc ? size : alloc;
			if (end > ssz) arg[ssz + below(end - ssz)] = (char)(1 + below(255));
		}
		if (io->st->nfields && io->st->fields[0].kind == GT_K_SIZE) put(arg, 0, 4, size);
	} else {
		/* int-argument requests */
		arg = NULL;
		alloc = 0;
		if (!strcmp(io->name, "VFIO_CHECK_EXTENSION")) req = io->request, arg = (char *)(uintptr_t)below(12);
		else if (!strcmp(io->name, "VFIO_SET_IOMMU")) {
			static const uint64_t t[] = { 1, 3, 3, 8, 0, 6 };
			arg = (char *)(uintptr_t)(chance(90) ? t[below(6)] : below(64));
		} else if (!strcmp(io->name, "VFIO_IOMMU_DIRTY_PAGES")) arg = SCR_BASE;
	}
	if (!strcmp(io->name, "IOMMU_TEST_CMD") && opname)
		snprintf(name, sizeof(name), "TEST_%s", opname);
	else if (!strcmp(io->name, "IOMMU_TEST_CMD"))
		snprintf(name, sizeof(name), "TEST_op%" PRIu64, get(arg, 4, 4));
	else
		snprintf(name, sizeof(name), "%s", io->name + (strncmp(io->name, "IOMMU_", 6) ? 0 : 6));
	if (alloc) memcpy(arg_pre, arg, alloc);
	memcpy(scr_pre, SCR_BASE, SCR_LEN);
	if (check_mem) mem_snapshot(mem_pre);
	if (verbose && alloc) {
		fprintf(stderr, "%ld %s size=%u in:", call_no, name, size);
		for (uint32_t i = 0; i < alloc && i < 96; i++) fprintf(stderr, "%02x", (unsigned char)arg[i]);
		fprintf(stderr, "\n");
	}
	errno = 0;
	rc = ioctl(fd, req, arg);
	err = errno;
	clean = 0;
	line[0] = 0;
	if (alloc) {
		harvest(io->st, arg, (char *)arg_pre, size, rc);
		if (view) harvest(view, arg, (char *)arg_pre, size, rc);
		diff(line, sizeof(line), "a", arg_pre, (unsigned char *)arg, alloc, 1);
	}
	diff(line, sizeof(line), "s", scr_pre, (unsigned char *)SCR_BASE, SCR_LEN, 1);
	if (check_mem) {
		mem_snapshot(mem_post);
		diff(line, sizeof(line), "m", mem_pre, mem_post, MEM_PAGES * PAGE, 0);
	}
	emit(name, rc, err);
}

static int pick_any_fd(void)
{
	uint64_t v;
	if (chance(25) || !pool_pick(GT_P_FD_ANY, &v, NULL)) return iommufd;
	return (int)v;
}

static char *pick_buf(void)
{
	return (char *)(uintptr_t)pick_ptr("buf", "");
}

static void do_file_op(void)
{
	unsigned r = (unsigned)below(100);
	long rc;
	int err, fd;
	char name[64];
	fill_scratch();
	memcpy(scr_pre, SCR_BASE, SCR_LEN);
	line[0] = 0;
	if (r < 30) {
		static const size_t counts[] = { 0, 1, 7, 8, 16, 24, 32, 40, 47, 48, 56, 64, 96, 4096, 1 << 20 };
		uint64_t v;
		fd = pool_pick(chance(50) ? GT_P_FD_FAULT : GT_P_FD_VEVENTQ, &v, NULL) ? (int)v : pick_any_fd();
		size_t n = chance(90) ? counts[below(15)] : (size_t)rnd();
		char *b = pick_buf();
		errno = 0;
		if (chance(8)) { rc = pread(fd, b, n, 0); snprintf(name, sizeof(name), "pread(f%d,%zu)", fd_ord(fd), n); }
		else { rc = read(fd, b, n); snprintf(name, sizeof(name), "read(f%d,%zu)", fd_ord(fd), n); }
	} else if (r < 50) {
		static const size_t counts[] = { 0, 4, 7, 8, 16, 24, 4096 };
		uint64_t v;
		fd = pool_pick(GT_P_FD_FAULT, &v, NULL) && chance(85) ? (int)v : pick_any_fd();
		size_t n = chance(90) ? counts[below(7)] : (size_t)rnd();
		char *b = pick_buf();
		errno = 0;
		if (chance(8)) { rc = pwrite(fd, b, n, 0); snprintf(name, sizeof(name), "pwrite(f%d,%zu)", fd_ord(fd), n); }
		else { rc = write(fd, b, n); snprintf(name, sizeof(name), "write(f%d,%zu)", fd_ord(fd), n); }
	} else if (r < 65) {
		struct pollfd p = { .fd = pick_any_fd(), .events = (short)(POLLIN | POLLOUT | (chance(50) ? POLLPRI : 0)) };
		errno = 0;
		rc = poll(&p, 1, 0);
		snprintf(name, sizeof(name), "poll(f%d)", fd_ord(p.fd));
		snprintf(line, sizeof(line), " revents=%#x", p.revents);
		fd = p.fd;
	} else if (r < 80) {
		static const struct { const char *n; unsigned long req; int arg; } v[] = {
			{ "FIGETBSZ", FIGETBSZ, 1 }, { "FIONBIO", FIONBIO, 1 }, { "FIOCLEX", FIOCLEX, 0 },
			{ "FIONCLEX", FIONCLEX, 0 }, { "FIOQSIZE", FIOQSIZE, 1 }, { "FIONREAD", FIONREAD, 1 },
			{ "FIOASYNC", FIOASYNC, 1 }, { "garbage", 0, 1 },
		};
		unsigned k = (unsigned)below(8);
		unsigned long req = v[k].req;
		fd = pick_any_fd();
		if (!req) req = chance(50) ? (unsigned long)(0x3b00 | (0x80 + below(48))) : (unsigned long)(uint32_t)rnd();
		uint32_t *a = (uint32_t *)SCR_BASE;
		if (!strcmp(v[k].n, "FIONBIO") || !strcmp(v[k].n, "FIOASYNC")) *a = 0; /* keep fds blocking, no SIGIO */
		errno = 0;
		rc = ioctl(fd, req, v[k].arg ? (void *)a : NULL);
		if (!strcmp(v[k].n, "garbage")) snprintf(name, sizeof(name), "ioctl(f%d,%#lx)", fd_ord(fd), req);
		else snprintf(name, sizeof(name), "%s(f%d)", v[k].n, fd_ord(fd));
	} else if (r < 88) {
		static const size_t lens[] = { PAGE, 2 * PAGE, 0, 16 * PAGE };
		size_t len = lens[below(4)];
		off_t off = (off_t)(chance(80) ? PAGE * below(4) : (rnd() & ~(PAGE - 1)) & 0x7fffffffffffULL);
		fd = chance(80) ? iommufd : pick_any_fd();
		errno = 0;
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
		err = errno;
		rc = p == MAP_FAILED ? -1 : 0;
		if (p != MAP_FAILED) munmap(p, len);
		errno = err;
		snprintf(name, sizeof(name), "mmap(f%d,%zu,%#lx)", fd_ord(fd), len, (unsigned long)off);
	} else {
		/* close an event/access fd the kernel gave us */
		uint64_t v;
		if (!pool_pick(GT_P_FD_ANY, &v, NULL) || (int)v == iommufd) { snprintf(name, sizeof(name), "close(none)"); rc = 0; errno = 0; fd = -1; }
		else {
			fd = (int)v;
			snprintf(name, sizeof(name), "close(f%d)", fd_ord(fd));
			errno = 0;
			rc = close(fd);
			int e = errno;
			fd_forget(fd);
			errno = e;
		}
	}
	err = errno;
	diff(line, sizeof(line), "s", scr_pre, (unsigned char *)SCR_BASE, SCR_LEN, 1);
	emit(name, rc, err);
}

/* Changes to the user memory under the mappings: new bytes, a fresh page (MAP_FIXED), a hole. */
static void do_mem_op(void)
{
	unsigned p = (unsigned)below(MEM_PAGES), n = 1 + (unsigned)below(4);
	char name[64];
	long rc = 0;
	int err = 0;
	if (p + n > MEM_PAGES) n = MEM_PAGES - p;
	line[0] = 0;
	unsigned r = (unsigned)below(100);
	if (r < 60) {
		uint64_t tag = rnd();
		snprintf(name, sizeof(name), "mem_write(%u,%u)", p, n);
		for (unsigned i = 0; i < n; i++)
			if (mem_mapped[p + i]) fill_pages(MEM_BASE + (p + i) * PAGE, PAGE, tag + i);
	} else if (r < 90) {
		snprintf(name, sizeof(name), "mem_remap(%u,%u)", p, n);
		errno = 0;
		void *q = mmap(MEM_BASE + p * PAGE, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		rc = q == MAP_FAILED ? -1 : 0;
		err = errno;
		if (q != MAP_FAILED) memset(mem_mapped + p, 1, n);
		if (q != MAP_FAILED && chance(50)) fill_pages(q, n * PAGE, rnd());
	} else {
		snprintf(name, sizeof(name), "mem_unmap(%u,%u)", p, n);
		errno = 0;
		rc = munmap(MEM_BASE + p * PAGE, n * PAGE);
		err = errno;
		if (rc == 0) memset(mem_mapped + p, 0, n);
	}
	emit(name, rc, err);
}

static void open_iommufd(void)
{
	iommufd = open("/dev/iommu", O_RDWR);
	if (iommufd < 0) {
		printf("open /dev/iommu: errno %d\n", errno);
		exit(3);
	}
}

struct weight { const char *name; unsigned w; };
static const struct weight weights[] = {
	{ "IOMMU_IOAS_ALLOC", 4 }, { "IOMMU_DESTROY", 3 }, { "IOMMU_IOAS_MAP", 12 }, { "IOMMU_IOAS_UNMAP", 6 },
	{ "IOMMU_IOAS_COPY", 5 }, { "IOMMU_HWPT_ALLOC", 7 }, { "IOMMU_HWPT_GET_DIRTY_BITMAP", 4 },
	{ "IOMMU_HWPT_INVALIDATE", 4 }, { "IOMMU_IOAS_MAP_FILE", 4 }, { "IOMMU_TEST_CMD", 36 },
	{ "VFIO_GET_API_VERSION", 1 }, { "VFIO_CHECK_EXTENSION", 1 }, { "VFIO_IOMMU_DIRTY_PAGES", 1 },
	{ "IOMMU_IOAS_CHANGE_PROCESS", 1 },
};
static unsigned weight_of(const char *name)
{
	for (size_t i = 0; i < GT_N(weights); i++)
		if (!strcmp(weights[i].name, name)) return weights[i].w;
	return 3;
}

static void force(const char *field, uint64_t v)
{
	if (nforced < 4) forced[nforced++] = (struct force){ field, v };
}

/* Now and then, the next step of the vIOMMU chain when its objects are missing. */
static int scenario(void)
{
	const struct gt_ioctl *io;
	uint64_t v;
	if (!chance(12)) return 0;
	if (pools[GT_P_DEV].n && !pools[GT_P_PARENT].n && (io = gioctl("IOMMU_HWPT_ALLOC"))) {
		force_clean = 1;
		force("flags", 1);
		force("data_type", 0);
		force("data_len", 0);
		force("data_uptr", 0);
		if (pool_pick(GT_P_IOAS, &v, NULL)) force("pt_id", v);
	} else if (pools[GT_P_PARENT].n && !pools[GT_P_VIOMMU].n && (io = gioctl("IOMMU_VIOMMU_ALLOC")) &&
		   gconst("IOMMU_VIOMMU_TYPE_SELFTEST", &v)) {
		force_clean = 1;
		force("type", v);
		force("flags", 0);
		if (pool_pick(GT_P_PARENT, &v, NULL)) force("hwpt_id", v);
	} else if (pools[GT_P_VIOMMU].n && !pools[GT_P_VDEV].n && (io = gioctl("IOMMU_VDEVICE_ALLOC"))) {
		force_clean = 1;
	} else if (pools[GT_P_VIOMMU].n && !pools[GT_P_VEVENTQ].n && (io = gioctl("IOMMU_VEVENTQ_ALLOC")) &&
		   gconst("IOMMU_VEVENTQ_TYPE_SELFTEST", &v)) {
		force_clean = 1;
		force("type", v);
		force("flags", 0);
		force("veventq_depth", 2 + below(6));
	} else if ((pools[GT_P_PARENT].n || pools[GT_P_VIOMMU].n) && chance(30) && (io = gioctl("IOMMU_HWPT_ALLOC")) &&
		   gconst("IOMMU_HWPT_DATA_SELFTEST", &v)) {
		force_clean = 1;
		force("data_type", v);
		force("data_len", 4);
		if (pool_pick(pools[GT_P_VIOMMU].n && chance(50) ? GT_P_VIOMMU : GT_P_PARENT, &v, NULL)) force("pt_id", v);
	} else {
		return 0;
	}
	do_ioctl(io);
	return 1;
}

static void drop_sys_resource(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0) return;
	d[0].effective &= ~(1u << CAP_SYS_RESOURCE);
	d[0].permitted &= ~(1u << CAP_SYS_RESOURCE);
	syscall(SYS_capset, &h, d);
}

static int run_seed(uint64_t seed, long calls)
{
	unsigned total = 0;
	const struct gt_ioctl *ioas_alloc = gioctl("IOMMU_IOAS_ALLOC"), *test = gioctl("IOMMU_TEST_CMD");

	rs = seed * 0x2545f4914f6cdd1dULL + 1;
	map_fixed(MEM_BASE, MEM_PAGES * PAGE, PROT_READ | PROT_WRITE);
	fill_pages(MEM_BASE, MEM_PAGES * PAGE, seed);
	map_fixed(SCR_BASE, SCR_LEN + PAGE, PROT_READ | PROT_WRITE);
	fill_pages(SCR_BASE + SCR_LEN, PAGE, ~seed);
	mprotect(SCR_BASE + SCR_LEN, PAGE, PROT_READ);
	map_fixed(ARG_BASE, PAGE, PROT_READ | PROT_WRITE);
	memset(mem_mapped, 1, MEM_PAGES);
	mem_pre = malloc(MEM_PAGES * PAGE);
	mem_post = malloc(MEM_PAGES * PAGE);
	open_iommufd();
	/* Files to map with IOAS_MAP_FILE: 16 pages, and an empty one. */
	for (int i = 0; i < 2; i++) {
		int m = memfd_create("golden", 0);
		if (m >= 0 && i == 0 && ftruncate(m, 16 * PAGE) == 0) {
			char *p = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
			if (p != MAP_FAILED) { fill_pages(p, 16 * PAGE, seed + 7); munmap(p, 16 * PAGE); }
		}
		if (m >= 0) { pool_add(GT_P_FD_MEMFD, (uint64_t)m, 0); }
	}
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { 0 };
	syscall(SYS_capget, &h, d);
	printf("golden profile=%s seed=%" PRIu64 " calls=%ld cap_ipc_lock=%d cap_sys_resource=%d\n", GT_PROFILE, seed, calls,
	       !!(d[0].effective & (1u << CAP_IPC_LOCK)), !!(d[0].effective & (1u << CAP_SYS_RESOURCE)));

	for (size_t i = 0; i < GT_N(gt_ioctls); i++) total += weight_of(gt_ioctls[i].name);
	for (call_no = 0; call_no < calls; call_no++) {
		unsigned r = (unsigned)below(100);
		if (!pools[GT_P_IOAS].n && ioas_alloc && chance(50)) { do_ioctl(ioas_alloc); continue; }
		if (!pools[GT_P_DEV].n && pools[GT_P_IOAS].n && test && chance(25)) {
			/* give the first mock device a fair chance: MOCK_DOMAIN on a live IOAS */
			force_op = "IOMMU_TEST_OP_MOCK_DOMAIN";
			do_ioctl(test);
			continue;
		}
		if (scenario()) continue;
		if (r < 80) {
			unsigned k = (unsigned)below(total);
			for (size_t i = 0; i < GT_N(gt_ioctls); i++) {
				unsigned w = weight_of(gt_ioctls[i].name);
				if (k < w) { do_ioctl(&gt_ioctls[i]); break; }
				k -= w;
			}
		} else if (r < 96) {
			do_file_op();
		} else if (r < 99 || !chance(10)) {
			do_mem_op();
		} else {
			/* A new /dev/iommu (rarely): everything not held by another file goes away. */
			line[0] = 0;
			int rc = close(iommufd);
			for (int p = GT_P_IOAS; p <= GT_P_IOVA; p++) pools[p].n = 0;
			open_iommufd();
			emit("reopen", rc, errno);
		}
		if (call_no % 64 == 0) fflush(stdout);
	}
	printf("end seed=%" PRIu64 "\n", seed);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	drop_sys_resource();
	if (argc >= 4 && !strcmp(argv[1], "-m")) {
		long calls = atol(argv[2]);
		for (int i = 3; i < argc; i++) {
			printf("== seed %s\n", argv[i]);
			fflush(stdout);
			pid_t pid = fork();
			if (pid == 0) return run_seed(strtoull(argv[i], NULL, 0), calls);
			int st = 0;
			waitpid(pid, &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) printf("seed %s: child status %#x\n", argv[i], st);
			fflush(stdout);
		}
		return 0;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: %s SEED CALLS [-v] | -m CALLS SEED...\n", argv[0]);
		return 2;
	}
	verbose = argc > 3 && !strcmp(argv[3], "-v");
	return run_seed(strtoull(argv[1], NULL, 0), atol(argv[2]));
}
