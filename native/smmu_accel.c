/*
 * What QEMU's `-device arm-smmuv3,accel=on` path does with a passed-through
 * device, as a plain program against /dev/iommu and the VFIO cdev (run it
 * through the shim: `iommufd-emu run --machine ioat-x2-smmu -- ./smmu_accel`):
 *
 *   GET_HW_INFO (SMMUv3 ID registers), a nest-parent HWPT over an IOAS that
 *   holds "guest RAM" (this program's own memory at fixed IPAs), VIOMMU_ALLOC,
 *   VDEVICE_ALLOC (vSID), VEVENTQ_ALLOC, the guest's stage-1 tables and CD
 *   written into guest RAM, a nested HWPT from a vSTE, attach through the cdev;
 *
 * then the device (an IOAT DMA engine, driven through its BAR) copies:
 *   1. a copy that hits (descriptor fetch and data both walk S1 then S2);
 *   2. a copy from an unmapped guest VA: the channel halts with READ_DATA_ERR
 *      and the vEVENTQ delivers F_TRANSLATION with the vSID;
 *   3. a write to a page the guest first mapped read-only (cached by a read),
 *      then made writable: it faults until the guest's TLBI_NH_VA for that
 *      ASID and page, and only then succeeds.
 * plus the second device's fault, reported with its own vSID.
 *
 * Output: one "ok N - ..." / "not ok N - ... (reason)" line per check; exit
 * status 0 when all pass. `smmu_accel bench [N]` instead times copies of
 * 4 KiB and 1 MiB through the nested domain and prints one JSON line.
 *
 * Arguments: [bench [N]] and the BDFs (default $VFIO_SELFTESTS_BDF or
 * 0000:00:03.0, and 0000:00:04.0), found as a VMM does, through sysfs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

/* The cdev interface (Linux 6.6+); older <linux/vfio.h> lack it. */
#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#endif

/* ---- checks ---------------------------------------------------------------------------- */

static int checks, failures;

static int check(int ok, const char *what, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int check(int ok, const char *what, const char *fmt, ...)
{
	checks++;
	if (ok) {
		printf("ok %d - %s\n", checks, what);
	} else {
		va_list ap;
		failures++;
		printf("not ok %d - %s (", checks, what);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf(")\n");
	}
	fflush(stdout);
	return ok;
}

static void die(const char *what)
{
	printf("Bail out! %s: %s\n", what, strerror(errno));
	exit(2);
}

/* ---- the IOAT's register interface (channel 0) ----------------------------------------- */

#define CH 0x80
#define CHANCTRL (CH + 0x00)
#define CHANCMD (CH + 0x04)
#define DMACOUNT (CH + 0x06)
#define CHANSTS (CH + 0x08)
#define CHAINADDR (CH + 0x10)
#define CHANERR (CH + 0x28)
#define CHANCMD_RESET 0x20
#define CHANCTRL_ANY_ERR_ABORT_EN 0x0008
#define STS_DONE 1
#define STS_HALTED 3
#define ERR_READ_DATA 0x100
#define ERR_WRITE_DATA 0x200

struct ioat_desc {
	uint32_t size;
	uint32_t ctl;
	uint64_t src;
	uint64_t dst;
	uint64_t next;
	uint64_t rsvd[4];
};

struct engine {
	int fd;
	uint32_t devid;
	volatile uint8_t *bar;
	struct ioat_desc *desc; /* in guest RAM */
	uint64_t desc_va;	/* its guest VA (what the engine is given) */
	unsigned max_copy;
};

#define R8(e, o) (*(volatile uint8_t *)((e)->bar + (o)))
#define R16(e, o) (*(volatile uint16_t *)((e)->bar + (o)))
#define R32(e, o) (*(volatile uint32_t *)((e)->bar + (o)))
#define R64(e, o) (*(volatile uint64_t *)((e)->bar + (o)))

static unsigned status(struct engine *e)
{
	return (unsigned)(R64(e, CHANSTS) & 7);
}

static void engine_reset(struct engine *e)
{
	R32(e, CHANERR) = R32(e, CHANERR);
	R8(e, CHANCMD) = CHANCMD_RESET;
}

/* Run `n` chained copy descriptors (prepared in e->desc) with one doorbell; returns the status. */
static unsigned run_chain(struct engine *e, unsigned n)
{
	R64(e, CHAINADDR) = e->desc_va;
	R16(e, CHANCTRL) = CHANCTRL_ANY_ERR_ABORT_EN;
	R16(e, DMACOUNT) = (uint16_t)n;
	for (int spins = 0; spins < 1000000; spins++) {
		unsigned s = status(e);
		if (s == STS_DONE || s == STS_HALTED)
			return s;
	}
	return status(e);
}

/* A copy of `size` bytes, split into max_copy pieces chained from e->desc. */
static unsigned copy(struct engine *e, uint64_t src, uint64_t dst, uint64_t size)
{
	unsigned n = 0;
	for (uint64_t off = 0; off < size; off += e->max_copy, n++) {
		struct ioat_desc *d = &e->desc[n];
		memset(d, 0, sizeof(*d));
		d->size = (uint32_t)(size - off < e->max_copy ? size - off : e->max_copy);
		d->src = src + off;
		d->dst = dst + off;
		d->next = e->desc_va + (uint64_t)(n + 1) * sizeof(*d);
	}
	return run_chain(e, n);
}

/* ---- guest RAM and the guest's stage-1 tables -------------------------------------------- */

#define RAM_IPA 0x40000000ull
#define RAM_SIZE (8ull << 20)
#define PG 4096ull

static uint8_t *ram;	  /* this program's mapping of guest RAM */
static uint64_t ram_next; /* bump allocator, in IPAs */

static void *va_of(uint64_t ipa)
{
	return ram + (ipa - RAM_IPA);
}

static uint64_t alloc_ipa(uint64_t bytes)
{
	uint64_t a = (ram_next + PG - 1) & ~(PG - 1);
	if (a + bytes > RAM_IPA + RAM_SIZE) {
		printf("Bail out! guest RAM exhausted\n");
		exit(2);
	}
	ram_next = a + bytes;
	memset(va_of(a), 0, bytes);
	return a;
}

/* Stage-1 descriptor bits (VMSAv8-64, 4K granule). */
#define D_TABLE 3ull
#define D_PAGE 3ull
#define D_ATTRIDX_WB (1ull << 2) /* MAIR index 1: normal write-back */
#define D_AP_EL0 (1ull << 6)
#define D_AP_RO (1ull << 7)
#define D_SH_INNER (3ull << 8)
#define D_AF (1ull << 10)
#define D_NG (1ull << 11)
#define D_ADDR 0x0000fffffffff000ull

static uint64_t s1_root;

/* Map one 4K page va -> ipa in the 4-level, 48-bit stage-1 table. */
static void s1_map(uint64_t va, uint64_t ipa, int writable)
{
	uint64_t table = s1_root;
	for (int level = 0; level < 3; level++) {
		uint64_t *e = (uint64_t *)va_of(table) + ((va >> (39 - 9 * level)) & 511);
		if (!(*e & 1))
			*e = alloc_ipa(PG) | D_TABLE;
		table = *e & D_ADDR;
	}
	uint64_t *pte = (uint64_t *)va_of(table) + ((va >> 12) & 511);
	*pte = (ipa & D_ADDR) | D_AF | D_SH_INNER | D_AP_EL0 | D_ATTRIDX_WB | D_NG | D_PAGE | (writable ? 0 : D_AP_RO);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void s1_map_range(uint64_t va, uint64_t ipa, uint64_t len)
{
	for (uint64_t o = 0; o < len; o += PG)
		s1_map(va + o, ipa + o, 1);
}

/* ---- iommufd helpers ---------------------------------------------------------------------- */

static int iommufd;
static uint32_t viommu_id;
static int veventq_fd;

#define ASID 5
#define VSID0 0x42
#define VSID1 0x43

/* SMMUv3 commands (16 bytes). */
#define CMD_CFGI_CD 0x05
#define CMD_TLBI_NH_VA 0x12

static int invalidate(const uint64_t (*cmds)[2], uint32_t n, uint32_t *done)
{
	struct iommu_hwpt_invalidate inv = {
		.size = sizeof(inv), .hwpt_id = viommu_id, .data_uptr = (uintptr_t)cmds,
		.data_type = IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, .entry_len = 16, .entry_num = n,
	};
	int r = ioctl(iommufd, IOMMU_HWPT_INVALIDATE, &inv);
	*done = inv.entry_num;
	return r;
}

struct event {
	uint32_t flags;
	uint8_t id;
	uint32_t sid;
	int read;
	int s2;
	uint64_t input;
};

/* Read the vEVENTQ: up to `max` records; returns how many (0: empty). */
static int read_events(struct event *out, int max)
{
	uint8_t buf[4096];
	ssize_t n = read(veventq_fd, buf, sizeof(buf));
	if (n < 0)
		return -1;
	int k = 0;
	for (ssize_t off = 0; off + 8 <= n && k < max;) {
		struct iommufd_vevent_header h;
		memcpy(&h, buf + off, sizeof(h));
		off += sizeof(h);
		out[k].flags = h.flags;
		if (h.flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS) {
			k++;
			continue;
		}
		struct iommu_vevent_arm_smmuv3 r;
		memcpy(&r, buf + off, sizeof(r));
		off += sizeof(r);
		uint64_t w0 = r.evt[0], w1 = r.evt[1];
		out[k].id = (uint8_t)(w0 & 0xff);
		out[k].sid = (uint32_t)(w0 >> 32);
		out[k].read = (int)((w1 >> 35) & 1);
		out[k].s2 = (int)((w1 >> 39) & 1);
		out[k].input = r.evt[2];
		k++;
	}
	return k;
}

/* The cdev of a BDF, as a VMM finds it: /sys/bus/pci/devices/<BDF>/vfio-dev/vfioN. */
static int open_cdev(const char *bdf)
{
	char path[256];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	DIR *d = opendir(path);
	if (!d)
		die(path);
	struct dirent *de;
	char node[300] = "";
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, "vfio", 4))
			snprintf(node, sizeof(node), "/dev/vfio/devices/%s", de->d_name);
	closedir(d);
	if (!node[0]) {
		errno = ENOENT;
		die(path);
	}
	int fd = open(node, O_RDWR);
	if (fd < 0)
		die(node);
	return fd;
}

static void setup_engine(struct engine *e, const char *bdf, uint64_t desc_va, uint64_t desc_ipa)
{
	e->fd = open_cdev(bdf);
	struct vfio_device_bind_iommufd bind = { .argsz = 16, .iommufd = iommufd };
	if (ioctl(e->fd, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		die("VFIO_DEVICE_BIND_IOMMUFD");
	e->devid = bind.out_devid;
	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (ioctl(e->fd, VFIO_DEVICE_GET_REGION_INFO, &bar))
		die("VFIO_DEVICE_GET_REGION_INFO BAR0");
	e->bar = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, e->fd, (off_t)bar.offset);
	if (e->bar == MAP_FAILED)
		die("mmap BAR0");
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(e->fd, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("VFIO_DEVICE_GET_REGION_INFO config");
	uint16_t cmd = 0x6; /* memory space + bus master */
	if (pwrite(e->fd, &cmd, 2, (off_t)cfg.offset + 4) != 2)
		die("pwrite PCI_COMMAND");
	e->desc = va_of(desc_ipa);
	e->desc_va = desc_va;
	e->max_copy = 1u << R8(e, 0x01); /* XFERCAP */
	engine_reset(e);
}

static uint32_t nested_hwpt(uint32_t devid, uint64_t cd_ipa)
{
	/* The guest's STE: V, Config = S1 translate, S1ContextPtr = the CD; cacheability of CD fetches. */
	struct iommu_hwpt_arm_smmuv3 vste = { .ste = {
		1ull | (5ull << 1) | (cd_ipa & 0x000fffffffffffc0ull),
		(1ull << 2) | (1ull << 4) | (3ull << 6),
	} };
	struct iommu_hwpt_alloc a = {
		.size = sizeof(a), .dev_id = devid, .pt_id = viommu_id, .data_type = IOMMU_HWPT_DATA_ARM_SMMUV3,
		.data_len = sizeof(vste), .data_uptr = (uintptr_t)&vste,
	};
	if (ioctl(iommufd, IOMMU_HWPT_ALLOC, &a))
		die("IOMMU_HWPT_ALLOC nested");
	return a.out_hwpt_id;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Guest VAs the engines are programmed with (stage-1 input addresses). */
#define VA_DESC0 0x10000000ull
#define VA_DESC1 0x11000000ull
#define VA_SRC 0x20000000ull
#define VA_DST 0x30000000ull
#define VA_RO 0x50000000ull
#define VA_UNMAPPED 0x60000000ull
#define VA_BIG_SRC 0x100000000ull
#define VA_BIG_DST 0x200000000ull
#define BIG (1ull << 20)

int main(int argc, char **argv)
{
	int bench = argc > 1 && !strcmp(argv[1], "bench");
	int argi = bench ? 2 : 1;
	long iters = 0;
	if (bench && argc > argi && argv[argi][0] >= '0' && argv[argi][0] <= '9')
		iters = atol(argv[argi++]);
	const char *env = getenv("VFIO_SELFTESTS_BDF");
	const char *bdf0 = argc > argi ? argv[argi] : env ? env : "0000:00:03.0";
	const char *bdf1 = argc > argi + 1 ? argv[argi + 1] : "0000:00:04.0";

	iommufd = open("/dev/iommu", O_RDWR);
	if (iommufd < 0)
		die("open /dev/iommu");
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	ram_next = RAM_IPA;
	uint64_t desc0 = alloc_ipa(PG * 2), desc1 = alloc_ipa(PG);

	struct engine e0, e1;
	setup_engine(&e0, bdf0, VA_DESC0, desc0);
	if (!bench)
		setup_engine(&e1, bdf1, VA_DESC1, desc1);

	/* GET_HW_INFO: the SMMU's ID registers. */
	struct iommu_hw_info_arm_smmuv3 regs = { 0 };
	struct iommu_hw_info hw = { .size = sizeof(hw), .dev_id = e0.devid, .data_len = sizeof(regs), .data_uptr = (uintptr_t)&regs };
	if (ioctl(iommufd, IOMMU_GET_HW_INFO, &hw))
		die("IOMMU_GET_HW_INFO");
	if (!bench) {
		check(hw.out_data_type == IOMMU_HW_INFO_TYPE_ARM_SMMUV3, "GET_HW_INFO reports an ARM SMMUv3", "type %u", hw.out_data_type);
		check((regs.idr[0] & 3) == 3, "IDR0 has S1P and S2P (nesting)", "IDR0 0x%x", regs.idr[0]);
		check(regs.idr[5] & (1u << 4), "IDR5 has GRAN4K", "IDR5 0x%x", regs.idr[5]);
		printf("# IDR0=0x%x IDR1=0x%x IDR3=0x%x IDR5=0x%x IIDR=0x%x AIDR=0x%x\n", regs.idr[0], regs.idr[1], regs.idr[3],
		       regs.idr[5], regs.iidr, regs.aidr);
	}

	/* The nest parent (stage 2) over an IOAS mapping guest RAM at its IPAs. */
	struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &ia))
		die("IOMMU_IOAS_ALLOC");
	struct iommu_hwpt_alloc pa = { .size = sizeof(pa), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT, .dev_id = e0.devid, .pt_id = ia.out_ioas_id };
	if (ioctl(iommufd, IOMMU_HWPT_ALLOC, &pa))
		die("IOMMU_HWPT_ALLOC nest parent");
	struct iommu_ioas_map map = {
		.size = sizeof(map), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ia.out_ioas_id, .user_va = (uintptr_t)ram, .length = RAM_SIZE, .iova = RAM_IPA,
	};
	if (ioctl(iommufd, IOMMU_IOAS_MAP, &map))
		die("IOMMU_IOAS_MAP guest RAM");

	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_ARM_SMMUV3, .dev_id = e0.devid, .hwpt_id = pa.out_hwpt_id };
	if (ioctl(iommufd, IOMMU_VIOMMU_ALLOC, &va))
		die("IOMMU_VIOMMU_ALLOC");
	viommu_id = va.out_viommu_id;
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = viommu_id, .dev_id = e0.devid, .virt_id = VSID0 };
	if (ioctl(iommufd, IOMMU_VDEVICE_ALLOC, &vd))
		die("IOMMU_VDEVICE_ALLOC");
	if (!bench) {
		struct iommu_vdevice_alloc vd1 = { .size = sizeof(vd1), .viommu_id = viommu_id, .dev_id = e1.devid, .virt_id = VSID1 };
		if (ioctl(iommufd, IOMMU_VDEVICE_ALLOC, &vd1))
			die("IOMMU_VDEVICE_ALLOC (second device)");
	}
	struct iommu_veventq_alloc qa = { .size = sizeof(qa), .viommu_id = viommu_id, .type = IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, .veventq_depth = 64 };
	if (ioctl(iommufd, IOMMU_VEVENTQ_ALLOC, &qa))
		die("IOMMU_VEVENTQ_ALLOC");
	veventq_fd = (int)qa.out_veventq_fd;

	/* The guest's stage 1 (4K granule, 48-bit VA, ASID 5) and its CD, in guest RAM. */
	s1_root = alloc_ipa(PG);
	s1_map(VA_DESC0, desc0, 1);
	s1_map(VA_DESC0 + PG, desc0 + PG, 1);
	s1_map(VA_DESC1, desc1, 1);
	uint64_t src = alloc_ipa(PG), dst = alloc_ipa(PG), ro = alloc_ipa(PG);
	s1_map(VA_SRC, src, 1);
	s1_map(VA_DST, dst, 1);
	s1_map(VA_RO, ro, 0);
	uint64_t big = 0;
	if (bench) {
		big = alloc_ipa(2 * BIG);
		s1_map_range(VA_BIG_SRC, big, BIG);
		s1_map_range(VA_BIG_DST, big + BIG, BIG);
	}
	uint64_t cd_ipa = alloc_ipa(64);
	uint64_t *cd = va_of(cd_ipa);
	cd[0] = 16ull /* T0SZ: 48-bit */ | (1ull << 8) | (1ull << 10) | (3ull << 12) /* IR0, OR0 WB, SH0 inner */ |
		(1ull << 30) /* EPD1 */ | (1ull << 31) /* V */ | (5ull << 32) /* IPS 48-bit */ | (1ull << 41) /* AA64 */ |
		(1ull << 45) /* R: record faults */ | (1ull << 46) /* A */ | (1ull << 47) /* ASET */ | ((uint64_t)ASID << 48);
	cd[1] = s1_root;
	cd[3] = 0xf404ff44ull; /* MAIR: NC, WB, Device, inner-NC outer-WB */

	uint32_t h0 = nested_hwpt(e0.devid, cd_ipa);
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = h0 };
	if (ioctl(e0.fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at))
		die("VFIO_DEVICE_ATTACH_IOMMUFD_PT nested");

	if (bench) {
		/* Copies through the nested domain: 4 KiB (one descriptor per doorbell), 1 MiB (a chain per doorbell). */
		long n4 = iters ? iters : 2000, n1m = iters ? iters / 20 + 1 : 40;
		double t0 = now();
		for (long i = 0; i < n4; i++)
			if (copy(&e0, VA_SRC, VA_DST, PG) != STS_DONE) {
				printf("Bail out! 4 KiB copy %ld halted, CHANERR 0x%x\n", i, R32(&e0, CHANERR));
				return 2;
			}
		double t1 = now();
		for (long i = 0; i < n1m; i++)
			if (copy(&e0, VA_BIG_SRC, VA_BIG_DST, BIG) != STS_DONE) {
				printf("Bail out! 1 MiB copy %ld halted, CHANERR 0x%x\n", i, R32(&e0, CHANERR));
				return 2;
			}
		double t2 = now();
		printf("{\"copies_4k\":%ld,\"s_4k\":%.6f,\"copies_1m\":%ld,\"s_1m\":%.6f,\"max_copy\":%u}\n", n4, t1 - t0, n1m, t2 - t1,
		       e0.max_copy);
		return 0;
	}

	uint32_t h1 = nested_hwpt(e1.devid, cd_ipa);
	struct vfio_device_attach_iommufd_pt at1 = { .argsz = sizeof(at1), .pt_id = h1 };
	if (ioctl(e1.fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at1))
		die("VFIO_DEVICE_ATTACH_IOMMUFD_PT nested (second device)");
	check(1, "accel=on setup: nest parent, vIOMMU, vDEVICEs, vEVENTQ, nested HWPTs attached through the cdevs", "-");

	struct event ev[8];
	int n;

	/* 1. A copy that hits. */
	for (unsigned i = 0; i < PG; i++)
		((uint8_t *)va_of(src))[i] = (uint8_t)(i * 7 + 1);
	unsigned s = copy(&e0, VA_SRC, VA_DST, PG);
	check(s == STS_DONE, "DMA 1: a 4 KiB copy through guest stage 1 and stage 2 completes", "status %u, CHANERR 0x%x", s, R32(&e0, CHANERR));
	check(!memcmp(va_of(src), va_of(dst), PG), "DMA 1: the bytes landed in guest RAM", "destination differs");
	n = read_events(ev, 8);
	check(n == 0, "DMA 1: no vEVENT", "%d events", n);

	/* 2. A copy from an unmapped guest VA: the engine halts, the vEVENTQ gets F_TRANSLATION with the vSID. */
	s = copy(&e0, VA_UNMAPPED + 0x40, VA_DST, 64);
	check(s == STS_HALTED && R32(&e0, CHANERR) == ERR_READ_DATA, "DMA 2: a copy from an unmapped VA halts with READ_DATA_ERR",
	      "status %u, CHANERR 0x%x", s, R32(&e0, CHANERR));
	n = read_events(ev, 8);
	check(n == 1 && ev[0].flags == 0 && ev[0].id == 0x10 && ev[0].sid == VSID0 && ev[0].input == VA_UNMAPPED + 0x40 && ev[0].read && !ev[0].s2,
	      "DMA 2: the vEVENTQ delivers F_TRANSLATION with the vSID, the VA, read", "%d events; first id 0x%x sid 0x%x addr 0x%" PRIx64 " read %d s2 %d",
	      n, n > 0 ? ev[0].id : 0, n > 0 ? ev[0].sid : 0, n > 0 ? ev[0].input : 0, n > 0 ? ev[0].read : -1, n > 0 ? ev[0].s2 : -1);
	engine_reset(&e0);
	s = copy(&e1, VA_SRC, VA_UNMAPPED, 8);
	n = read_events(ev, 8);
	check(s == STS_HALTED && R32(&e1, CHANERR) == ERR_WRITE_DATA && n == 1 && ev[0].sid == VSID1 && !ev[0].read,
	      "the second device's faulting write: WRITE_DATA_ERR, its own vSID", "status %u, CHANERR 0x%x, %d events, sid 0x%x",
	      s, R32(&e1, CHANERR), n, n > 0 ? ev[0].sid : 0);
	engine_reset(&e1);

	/* 3. A write that only succeeds after the right TLBI. */
	s = copy(&e0, VA_RO, VA_DST, 64); /* a read caches the read-only entry */
	check(s == STS_DONE, "DMA 3: reading the read-only page works", "status %u, CHANERR 0x%x", s, R32(&e0, CHANERR));
	s = copy(&e0, VA_SRC, VA_RO, 256);
	n = read_events(ev, 8);
	check(s == STS_HALTED && R32(&e0, CHANERR) == ERR_WRITE_DATA && n == 1 && ev[0].id == 0x13 && ev[0].sid == VSID0,
	      "DMA 3: writing it faults: F_PERMISSION with the vSID", "status %u, CHANERR 0x%x, %d events, id 0x%x", s, R32(&e0, CHANERR), n,
	      n > 0 ? ev[0].id : 0);
	engine_reset(&e0);
	s1_map(VA_RO, ro, 1); /* the guest makes it writable, without invalidating yet */
	s = copy(&e0, VA_SRC, VA_RO, 256);
	n = read_events(ev, 8);
	check(s == STS_HALTED && n == 1 && ev[0].id == 0x13, "DMA 3: before any TLBI the cached read-only entry still faults",
	      "status %u, %d events", s, n);
	engine_reset(&e0);
	const uint64_t wrong[3][2] = {
		{ CMD_TLBI_NH_VA | ((uint64_t)(ASID + 1) << 48), VA_RO | 1 },	 /* another ASID */
		{ CMD_TLBI_NH_VA | ((uint64_t)ASID << 48), (VA_RO + PG) | 1 }, /* another page */
		{ CMD_CFGI_CD | ((uint64_t)VSID0 << 32), 1 },			 /* a CD re-read */
	};
	uint32_t done = 0;
	int r = invalidate(wrong, 3, &done);
	check(r == 0 && done == 3, "HWPT_INVALIDATE on the vIOMMU takes three guest commands", "ret %d errno %d entry_num %u", r, r ? errno : 0, done);
	s = copy(&e0, VA_SRC, VA_RO, 256);
	n = read_events(ev, 8);
	check(s == STS_HALTED && n == 1, "DMA 3: unrelated invalidations leave the stale entry", "status %u, %d events", s, n);
	engine_reset(&e0);
	const uint64_t right[1][2] = { { CMD_TLBI_NH_VA | ((uint64_t)ASID << 48), VA_RO | 1 } };
	r = invalidate(right, 1, &done);
	check(r == 0 && done == 1, "HWPT_INVALIDATE: TLBI_NH_VA for ASID 5 and the page", "ret %d errno %d", r, r ? errno : 0);
	for (unsigned i = 0; i < 256; i++)
		((uint8_t *)va_of(src))[i] = (uint8_t)(255 - i);
	s = copy(&e0, VA_SRC, VA_RO, 256);
	check(s == STS_DONE, "DMA 3: after the right TLBI the write succeeds", "status %u, CHANERR 0x%x", s, R32(&e0, CHANERR));
	check(!memcmp(va_of(src), va_of(ro), 256), "DMA 3: the bytes are in the once read-only page", "destination differs");
	n = read_events(ev, 8);
	check(n == 0, "DMA 3: no further vEVENT", "%d events", n);

	printf("1..%d\n", checks);
	printf("# %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
