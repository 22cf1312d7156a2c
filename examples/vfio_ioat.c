/*
 * iommufd-emu VFIO example: a user-space driver for the emulated Intel I/OAT DMA
 * engine, the way one is written for real hardware. Run it with
 *   npm run example:vfio        (builds it and runs it through
 *                                `iommufd-emu run --machine ioat --trace=devices`)
 * or by hand: `iommufd-emu run --machine ioat --trace=devices -- ./vfio_ioat [BDF]`.
 *
 * Steps: find the device's cdev through sysfs (/sys/bus/pci/devices/BDF/vfio-dev),
 * open /dev/iommu and allocate an IOAS, open /dev/vfio/devices/vfioN, bind it to
 * the iommufd and attach it to the IOAS; map a buffer into the IOAS at a fixed
 * IOVA; map BAR0, enable bus mastering, hook MSI-X vector 0 to an eventfd; reset
 * the channel, then let the engine copy 64 KiB inside the buffer (a chain of
 * descriptors, interrupt on the last), check the data and the interrupt; then a
 * copy from an IOVA that is not mapped: the IOMMU refuses the read and the
 * channel halts with a read-data error; reset, unmap, close.
 * `vfio_ioat bench [N] [BDF]` times N 4 KiB copies and N/20+1 1 MiB copies instead
 * (one JSON line; `npm run bench` reports it).
 *
 * Built against the system's <linux/vfio.h> and the headers generated from the
 * emulator's uAPI table (`iommufd-emu headers DIR`).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

/* The cdev interface (Linux 6.6+): older <linux/vfio.h> lack it. */
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

static int failures;

static int check(const char *what, int ok, const char *detail)
{
	printf("vfio-ioat: %-44s %s%s%s\n", what, ok ? "ok" : "FAILED", detail && *detail ? ": " : "", detail ? detail : "");
	if (!ok)
		failures++;
	return ok;
}

static int check_rc(const char *what, int rc)
{
	return check(what, rc >= 0, rc < 0 ? strerror(errno) : NULL);
}

static void bail(const char *what)
{
	printf("vfio-ioat: %s: %s -- giving up\n", what, strerror(errno));
	exit(1);
}

/* ---- the IOAT channel's registers (BAR0; channel 0 at +0x80) ---------------------------- */

#define XFERCAP 0x01
#define INTRCTRL 0x03
#define CBVER 0x08
#define CHANCTRL 0x80
#define CHANCMD 0x84
#define DMACOUNT 0x86
#define CHANSTS 0x88
#define CHAINADDR 0x90
#define CHANERR 0xa8

#define INTRCTRL_MSIX_VECTOR_CONTROL 0x08
#define CHANCTRL_INT_REARM 0x0001
#define CHANCTRL_ANY_ERR_ABORT_EN 0x0008
#define CHANCMD_RESET 0x20
#define CHANSTS_MASK 7
#define STS_DONE 1
#define STS_HALTED 3
#define CHANERR_READ_DATA 0x100
#define DESC_INT_EN 0x1

struct ioat_desc { /* 64 bytes, in memory the engine reads through the IOMMU */
	uint32_t size;
	uint32_t ctl;
	uint64_t src;
	uint64_t dst;
	uint64_t next;
	uint64_t rsvd[4];
};

static volatile uint8_t *bar;
#define REG8(o) (*(volatile uint8_t *)(bar + (o)))
#define REG16(o) (*(volatile uint16_t *)(bar + (o)))
#define REG32(o) (*(volatile uint32_t *)(bar + (o)))
#define REG64(o) (*(volatile uint64_t *)(bar + (o)))

static unsigned chan_status(void)
{
	return (unsigned)(REG64(CHANSTS) & CHANSTS_MASK);
}

/* Reset the channel; it comes back HALTED. */
static int chan_reset(void)
{
	REG32(CHANERR) = REG32(CHANERR); /* write-1-to-clear */
	REG8(CHANCMD) = CHANCMD_RESET;
	for (int i = 0; i < 100000 && (REG8(CHANCMD) & CHANCMD_RESET); i++)
		;
	return chan_status() == STS_HALTED;
}

/* Start `n` descriptors at IOVA `chain` and wait until the channel is done or halted. */
static unsigned chan_run(uint64_t chain, unsigned n)
{
	REG64(CHAINADDR) = chain;
	REG16(CHANCTRL) = CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN;
	REG16(DMACOUNT) = (uint16_t)n;
	unsigned s = STS_DONE;
	for (int i = 0; i < 1000000; i++) {
		s = chan_status();
		if (s == STS_DONE || s == STS_HALTED)
			break;
	}
	return s;
}

/* ---- the buffer: descriptors, source and destination, at fixed IOVAs ------------------ */

#define BUF_IOVA 0x10000000ull
#define BUF_SIZE (4ull << 20)
#define DESC_OFF 0x0
#define SRC_OFF 0x10000
#define DST_OFF 0x80000
#define COPY_SIZE 0x10000
#define BIG_SRC_OFF (1ull << 20) /* bench mode: 1 MiB copies */
#define BIG_DST_OFF (2ull << 20)
#define BIG (1ull << 20)
#define UNMAPPED_IOVA 0x40000000ull

static uint8_t *buf;
static uint64_t max_copy;

/* Chain descriptors (at DESC_OFF) copying `size` bytes in max_copy pieces; returns how many. */
static unsigned prepare_copy(uint64_t src_off, uint64_t dst_off, uint64_t size, int irq_on_last)
{
	struct ioat_desc *desc = (struct ioat_desc *)(buf + DESC_OFF);
	unsigned n = 0;
	for (uint64_t off = 0; off < size; off += max_copy, n++) {
		memset(&desc[n], 0, sizeof(desc[n]));
		desc[n].size = (uint32_t)(size - off < max_copy ? size - off : max_copy);
		desc[n].src = BUF_IOVA + src_off + off;
		desc[n].dst = BUF_IOVA + dst_off + off;
		desc[n].next = BUF_IOVA + DESC_OFF + (n + 1) * sizeof(*desc);
	}
	if (irq_on_last)
		desc[n - 1].ctl = DESC_INT_EN;
	return n;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* `vfio_ioat bench [N]`: N copies of 4 KiB, N/20+1 of 1 MiB, one doorbell each; one JSON line. */
static int bench(long n4)
{
	long n1m = n4 / 20 + 1;
	double t0 = now();
	for (long i = 0; i < n4; i++)
		if (chan_run(BUF_IOVA + DESC_OFF, prepare_copy(SRC_OFF, DST_OFF, 4096, 0)) != STS_DONE) {
			printf("vfio-ioat: bench: 4 KiB copy %ld halted, CHANERR 0x%x\n", i, REG32(CHANERR));
			return 1;
		}
	double t1 = now();
	for (long i = 0; i < n1m; i++)
		if (chan_run(BUF_IOVA + DESC_OFF, prepare_copy(BIG_SRC_OFF, BIG_DST_OFF, BIG, 0)) != STS_DONE) {
			printf("vfio-ioat: bench: 1 MiB copy %ld halted, CHANERR 0x%x\n", i, REG32(CHANERR));
			return 1;
		}
	double t2 = now();
	printf("{\"copies_4k\":%ld,\"s_4k\":%.6f,\"copies_1m\":%ld,\"s_1m\":%.6f,\"max_copy\":%llu}\n", n4, t1 - t0, n1m, t2 - t1,
	       (unsigned long long)max_copy);
	return 0;
}

static int open_cdev(const char *bdf)
{
	char dir[256], node[512] = "";
	snprintf(dir, sizeof(dir), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	DIR *d = opendir(dir);
	if (!d)
		bail(dir);
	struct dirent *de;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, "vfio", 4))
			snprintf(node, sizeof(node), "/dev/vfio/devices/%s", de->d_name);
	closedir(d);
	if (!node[0]) {
		errno = ENOENT;
		bail(dir);
	}
	printf("vfio-ioat: %s is %s\n", bdf, node);
	int fd = open(node, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		bail(node);
	return fd;
}

static unsigned long sysfs_hex(const char *bdf, const char *file)
{
	char path[256], buf[32] = "";
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/%s", bdf, file);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		bail(path);
	if (read(fd, buf, sizeof(buf) - 1) <= 0)
		bail(path);
	close(fd);
	return strtoul(buf, NULL, 0);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int bench_mode = argc > 1 && !strcmp(argv[1], "bench");
	long bench_n = 2000;
	if (bench_mode) {
		argv++, argc--;
		if (argc > 1 && argv[1][0] >= '0' && argv[1][0] <= '9')
			bench_n = atol(argv[1]), argv++, argc--;
	}
	const char *bdf = argc > 1 ? argv[1] : getenv("VFIO_SELFTESTS_BDF");
	if (!bdf)
		bdf = "0000:00:03.0";
	printf("vfio-ioat: device %s: vendor 0x%04lx device 0x%04lx\n", bdf, sysfs_hex(bdf, "vendor"), sysfs_hex(bdf, "device"));

	int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		bail("open /dev/iommu");
	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	if (!check_rc("IOMMU_IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas)))
		return 1;

	int dev = open_cdev(bdf);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	if (!check_rc("VFIO_DEVICE_BIND_IOMMUFD", ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind)))
		return 1;
	struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach), .pt_id = ioas.out_ioas_id };
	if (!check_rc("VFIO_DEVICE_ATTACH_IOMMUFD_PT (the IOAS)", ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)))
		return 1;
	printf("vfio-ioat: iommufd device %u attached to IOAS %u through HWPT %u\n", bind.out_devid, ioas.out_ioas_id, attach.pt_id);

	/* The buffer the engine works on, mapped at BUF_IOVA. */
	buf = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		bail("mmap buffer");
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas.out_ioas_id,
		.user_va = (uintptr_t)buf,
		.length = BUF_SIZE,
		.iova = BUF_IOVA,
	};
	if (!check_rc("IOMMU_IOAS_MAP (4 MiB at IOVA 0x10000000)", ioctl(iommufd, IOMMU_IOAS_MAP, &map)))
		return 1;

	/* BAR0 and config space. */
	struct vfio_region_info r0 = { .argsz = sizeof(r0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (!check_rc("VFIO_DEVICE_GET_REGION_INFO (BAR0)", ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r0)) ||
	    !check_rc("VFIO_DEVICE_GET_REGION_INFO (config)", ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg)))
		return 1;
	bar = mmap(NULL, r0.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, (off_t)r0.offset);
	if (bar == MAP_FAILED)
		bail("mmap BAR0");
	uint16_t command = 0x0406; /* memory space, bus master, INTx disable */
	check("pwrite PCI_COMMAND (bus master on)", pwrite(dev, &command, 2, (off_t)cfg.offset + 4) == 2, NULL);
	uint8_t cbver = REG8(CBVER), xfercap = REG8(XFERCAP);
	char ver[32];
	snprintf(ver, sizeof(ver), "CBVER 0x%02x, XFERCAP %u", cbver, xfercap);
	check("BAR0 read (the engine's version)", cbver == 0x33 || cbver == 0x32, ver);
	max_copy = 1ull << xfercap;

	/* MSI-X vector 0 -> an eventfd. */
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0)
		bail("eventfd");
	char irqbuf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)irqbuf;
	*irq = (struct vfio_irq_set){ .argsz = sizeof(irqbuf), .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
				      .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 1 };
	memcpy(irq->data, &efd, sizeof(efd));
	check_rc("VFIO_DEVICE_SET_IRQS (MSI-X 0 -> eventfd)", ioctl(dev, VFIO_DEVICE_SET_IRQS, irq));

	check("channel reset -> HALTED", chan_reset(), NULL);
	REG8(INTRCTRL) = INTRCTRL_MSIX_VECTOR_CONTROL;
	if (bench_mode)
		return bench(bench_n);

	/* 1. A 64 KiB copy in max_copy pieces, interrupt on the last descriptor. */
	for (unsigned i = 0; i < COPY_SIZE; i++)
		buf[SRC_OFF + i] = (uint8_t)(i * 7 + 1);
	memset(buf + DST_OFF, 0, COPY_SIZE);
	unsigned n = prepare_copy(SRC_OFF, DST_OFF, COPY_SIZE, 1);
	char what[96];
	snprintf(what, sizeof(what), "copy 64 KiB (%u descriptors) -> DONE", n);
	check(what, chan_run(BUF_IOVA + DESC_OFF, n) == STS_DONE, NULL);
	check("destination equals source", !memcmp(buf + SRC_OFF, buf + DST_OFF, COPY_SIZE), NULL);
	uint64_t count = 0;
	check("one MSI-X interrupt on the eventfd", read(efd, &count, 8) == 8 && count == 1, NULL);

	/* 2. A copy from an IOVA the IOAS does not map: the IOMMU refuses the read. */
	struct ioat_desc *desc = (struct ioat_desc *)(buf + DESC_OFF);
	desc[0] = (struct ioat_desc){ .size = 4096, .src = UNMAPPED_IOVA, .dst = BUF_IOVA + DST_OFF, .next = BUF_IOVA + DESC_OFF };
	unsigned s = chan_run(BUF_IOVA + DESC_OFF, 1);
	uint32_t err = REG32(CHANERR);
	snprintf(what, sizeof(what), "CHANERR 0x%x", err);
	check("unmapped-IOVA copy -> HALTED, READ_DATA_ERR", s == STS_HALTED && (err & CHANERR_READ_DATA), what);
	check("no interrupt for the failed copy", read(efd, &count, 8) < 0 && errno == EAGAIN, NULL);
	check("channel reset after the error -> HALTED", chan_reset(), NULL);

	struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = ioas.out_ioas_id, .iova = BUF_IOVA, .length = BUF_SIZE };
	check_rc("IOMMU_IOAS_UNMAP", ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap));
	munmap((void *)bar, r0.size);
	close(efd);
	close(dev); /* unbinds the device from the iommufd */
	close(iommufd);
	printf("vfio-ioat: %s\n", failures ? "FAILED" : "all steps ok");
	return failures ? 1 : 0;
}
