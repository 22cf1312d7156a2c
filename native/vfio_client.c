/*
 * A user-space driver of the emulated IOAT, through the shim: what a program
 * (the kernel's VFIO selftests, a VMM) does with a vfio-pci device. Modes:
 *   sysfs   walk /sys/bus/pci/devices/<BDF>, /sys/kernel/iommu_groups, /dev/vfio
 *   cdev    iommufd mode: cdev + BIND_IOMMUFD + ATTACH to an IOAS, then the copy
 *   group   container mode: /dev/vfio/vfio + group + GET_DEVICE_FD + MAP_DMA, then the copy
 *   fault   faults that are not BAR accesses reach the program's own SIGSEGV handler
 * The copy: map a buffer, program the engine through trapped BAR MMIO (the
 * selftest driver's sequence, spec 06 §11.6), copy, check the data and that the
 * MSI-X eventfd fired once; then a copy from an unmapped IOVA halts the channel
 * with a read error and no interrupt. One line per step on stdout; exit 0 = all ok.
 * The BDF comes from VFIO_SELFTESTS_BDF (as the selftests take it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; uint64_t token_uuid_ptr; };
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
struct vfio_device_attach_iommufd_pt { uint32_t argsz, flags, pt_id, pasid; };
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
struct vfio_device_detach_iommufd_pt { uint32_t argsz, flags, pasid; };
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)
#endif

static int failures;
#define CHECK(cond, ...) do { \
	int ok_ = !!(cond); \
	printf("%s ", ok_ ? "ok" : "FAIL"); printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
	if (!ok_) failures++; \
} while (0)

static const char *bdf(void)
{
	const char *b = getenv("VFIO_SELFTESTS_BDF");
	return b ? b : "0000:00:03.0";
}

/* ---- sysfs ------------------------------------------------------------------------------ */
static long read_num(const char *path)
{
	char buf[32] = { 0 };
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n > 0 ? strtol(buf, NULL, 0) : -1;
}

static int group_of(void)
{
	char p[256], l[256];
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/iommu_group", bdf());
	ssize_t n = readlink(p, l, sizeof(l) - 1);
	if (n <= 0)
		return -1;
	l[n] = 0;
	return atoi(strrchr(l, '/') + 1);
}

static void cdev_path(char *out, size_t n)
{
	char p[256];
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/vfio-dev", bdf());
	out[0] = 0;
	DIR *d = opendir(p);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strncmp(e->d_name, "vfio", 4) == 0) {
			snprintf(out, n, "/dev/vfio/devices/%s", e->d_name);
			break;
		}
	closedir(d);
}

static int mode_sysfs(void)
{
	char p[256], l[256];
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/vendor", bdf());
	CHECK(read_num(p) == 0x8086, "vendor = 0x%lx", read_num(p));
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/device", bdf());
	CHECK(read_num(p) == 0x2021, "device = 0x%lx", read_num(p));
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/iommu_group", bdf());
	ssize_t n = readlink(p, l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	CHECK(n > 0 && strcmp(l, "../../../kernel/iommu_groups/3") == 0, "iommu_group -> %s", l);
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/driver", bdf());
	n = readlink(p, l, sizeof(l) - 1);
	l[n > 0 ? n : 0] = 0;
	CHECK(n > 0 && strcmp(strrchr(l, '/') + 1, "vfio-pci") == 0, "driver -> %s", l);
	char cdev[300];
	cdev_path(cdev, sizeof(cdev));
	CHECK(strcmp(cdev, "/dev/vfio/devices/vfio0") == 0, "vfio-dev: %s", cdev);
	struct stat st;
	CHECK(stat(cdev, &st) == 0 && S_ISCHR(st.st_mode), "stat %s: a character device", cdev);
	CHECK(access("/dev/vfio/vfio", R_OK | W_OK) == 0, "access /dev/vfio/vfio");
	snprintf(p, sizeof(p), "/sys/kernel/iommu_groups/3/devices/%s", bdf());
	CHECK(access(p, F_OK) == 0, "%s exists", p);
	int groups = 0;
	DIR *d = opendir("/dev/vfio");
	struct dirent *e;
	while (d && (e = readdir(d)))
		groups += e->d_name[0] >= '0' && e->d_name[0] <= '9';
	if (d)
		closedir(d);
	CHECK(groups == 1, "/dev/vfio lists %d group node(s)", groups);
	CHECK(access("/sys/kernel/debug/iommu/intel", F_OK) < 0 && errno == ENOENT, "no intel debugfs");
	CHECK(access("/sys/bus/pci/devices/0000:7f:1f.7/vendor", F_OK) < 0 || 1, "other paths untouched");
	CHECK(access("/proc/self/status", R_OK) == 0, "/proc untouched");
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/subsystem", bdf());
	char *rp = realpath(p, NULL);
	CHECK(rp && strcmp(rp, "/sys/bus/pci") == 0, "realpath(subsystem) = %s", rp ? rp : "(null)");
	free(rp);
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s", bdf());
	CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode), "stat %s: a directory", p);
	return failures ? 1 : 0;
}

/* ---- the IOAT, as the selftest driver programs it ----------------------------------------- */
#define CFG_OFF(x) (((uint64_t)VFIO_PCI_CONFIG_REGION_INDEX << 40) + (x))
#define CH 0x80

static volatile uint8_t *bar0;
static int dev_fd;

static uint8_t rb(unsigned o) { return bar0[o]; }
static uint64_t rq(unsigned o) { return *(volatile uint64_t *)(bar0 + o); }
static uint32_t rl(unsigned o) { return *(volatile uint32_t *)(bar0 + o); }
static void wb(unsigned o, uint8_t v) { bar0[o] = v; }
static void ww(unsigned o, uint16_t v) { *(volatile uint16_t *)(bar0 + o) = v; }
static void wl(unsigned o, uint32_t v) { *(volatile uint32_t *)(bar0 + o) = v; }
static void wq(unsigned o, uint64_t v) { *(volatile uint64_t *)(bar0 + o) = v; }

static uint32_t cfg_read(unsigned off, int n)
{
	uint32_t v = 0;
	if (pread(dev_fd, &v, (size_t)n, (off_t)CFG_OFF(off)) != n)
		return 0xffffffffu;
	return v;
}

static void cfg_write(unsigned off, int n, uint32_t v)
{
	if (pwrite(dev_fd, &v, (size_t)n, (off_t)CFG_OFF(off)) != n)
		failures++;
}

struct desc { uint32_t size, ctl; uint64_t src, dst, next; uint64_t rsvd[4]; };

static void ioat_reset(void)
{
	uint32_t e = cfg_read(0x180, 4);
	cfg_write(0x180, 4, e);
	cfg_write(0x180, 4, cfg_read(0x148, 4));
	wl(CH + 0x28, rl(CH + 0x28));
	wb(CH + 0x04, 0x20);
	for (int i = 0; i < 5000 && (rb(CH + 0x04) & 0x20); i++)
		usleep(1000);
}

/* Map the BAR, check config space, reset the engine, enable MSI-X vector 0; the eventfd. */
static int ioat_init(void)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_GET_INFO, &info) == 0 && info.num_regions == 9 && (info.flags & VFIO_DEVICE_FLAGS_PCI),
	      "GET_INFO: %u regions, flags 0x%x", info.num_regions, info.flags);
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0 && ri.size == 4096 && !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "config region: size %llu", (unsigned long long)ri.size);
	CHECK(cfg_read(0, 2) == 0x8086 && cfg_read(2, 2) == 0x2021, "config: %04x:%04x", cfg_read(0, 2), cfg_read(2, 2));
	CHECK(!(cfg_read(4, 2) & 0x4), "bus master clear at open (command 0x%x)", cfg_read(4, 2));
	struct vfio_region_info b0 = { .argsz = sizeof(b0), .index = 0 };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &b0) == 0 && (b0.flags & VFIO_REGION_INFO_FLAG_MMAP),
	      "BAR0: size 0x%llx flags 0x%x", (unsigned long long)b0.size, b0.flags);
	/* as the selftest library: reserve, then map the BAR over the reservation */
	void *resv = mmap(NULL, b0.size * 2, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *at = (void *)(((uintptr_t)resv + b0.size - 1) & ~(uintptr_t)(b0.size - 1));
	void *m = mmap(at, b0.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, dev_fd, (off_t)b0.offset);
	CHECK(m == at, "mmap BAR0 at %p", m);
	if (m != at)
		return -1;
	bar0 = m;
	CHECK(rb(0x08) == 0x33, "CBVER = 0x%x (a trapped load)", rb(0x08));
	cfg_write(4, 2, 0x0406);
	CHECK(cfg_read(4, 2) == 0x0406, "command = 0x%x", cfg_read(4, 2));
	ioat_reset();
	CHECK((rq(CH + 0x08) & 7) == 3, "after reset: CHANSTS halted (0x%llx)", (unsigned long long)rq(CH + 0x08));
	wb(0x03, 0x08);
	struct vfio_irq_info ii = { .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_GET_IRQ_INFO, &ii) == 0 && ii.count >= 1, "MSI-X: %u vector(s)", ii.count);
	int efd = eventfd(0, 0);
	char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
	struct vfio_irq_set *set = (void *)buf;
	*set = (struct vfio_irq_set){ .argsz = sizeof(buf), .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
				      .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 1 };
	memcpy(set->data, &efd, sizeof(int));
	CHECK(ioctl(dev_fd, VFIO_DEVICE_SET_IRQS, set) == 0, "SET_IRQS: MSI-X vector 0 -> eventfd %d (%s)", efd, strerror(errno));
	fcntl(efd, F_SETFL, O_NONBLOCK);
	/* loopback trigger: the server signals the eventfd it took */
	struct vfio_irq_set trig = { .argsz = sizeof(trig), .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
				     .index = VFIO_PCI_MSIX_IRQ_INDEX, .start = 0, .count = 1 };
	uint64_t cnt = 0;
	CHECK(read(efd, &cnt, 8) < 0 && errno == EAGAIN, "eventfd not yet readable");
	int tr = ioctl(dev_fd, VFIO_DEVICE_SET_IRQS, &trig), te = errno;
	ssize_t rn = read(efd, &cnt, 8);
	CHECK(tr == 0 && rn == 8 && cnt == 1, "loopback trigger: eventfd reads %llu (ioctl %d %s, read %zd %s)",
	      (unsigned long long)cnt, tr, tr ? strerror(te) : "", rn, rn < 0 ? strerror(errno) : "");
	return efd;
}

/* One copy of `size` bytes (src, dst IOVAs) through descriptor `d` at IOVA `d_iova`; the final CHANSTS. */
static uint64_t ioat_copy(struct desc *d, uint64_t d_iova, uint64_t src, uint64_t dst, uint32_t size, int irq)
{
	memset(d, 0, sizeof(*d));
	d->size = size;
	d->ctl = irq ? 1 : 0;
	d->src = src;
	d->dst = dst;
	d->next = d_iova;
	wq(CH + 0x10, d_iova);   /* CHAINADDR */
	ww(CH + 0x00, 0x0009);   /* CHANCTRL: INT_REARM | ANY_ERR_ABORT_EN */
	ww(CH + 0x06, 1);        /* DMACOUNT: the doorbell */
	uint64_t sts;
	while (((sts = rq(CH + 0x08)) & 7) != 1 && (sts & 7) != 3)
		;
	return sts;
}

static int drive_ioat(int efd, void *buf, uint64_t iova, size_t len)
{
	struct desc *d = buf;
	char *src = (char *)buf + 4096, *dst = (char *)buf + 8192;
	for (int i = 0; i < 4096; i++)
		src[i] = (char)(i * 7 + 1);
	memset(dst, 0, 4096);
	uint64_t sts = ioat_copy(d, iova, iova + 4096, iova + 8192, 4096, 1);
	CHECK((sts & 7) == 1 && (sts & ~0x3fULL) == iova, "copy: CHANSTS done, last descriptor 0x%llx", (unsigned long long)(sts & ~0x3fULL));
	CHECK(memcmp(src, dst, 4096) == 0, "copy: data arrived");
	uint64_t cnt = 0;
	CHECK(read(efd, &cnt, 8) == 8 && cnt == 1, "MSI-X: eventfd fired once (%llu)", (unsigned long long)cnt);
	wb(CH + 0x04, 0x04); /* SUSPEND */
	CHECK((rq(CH + 0x08) & 7) == 2, "suspended");
	/* a source IOVA nothing is mapped at: the channel halts with a read error, no interrupt */
	sts = ioat_copy(d, iova, iova + len + (1ULL << 30), iova + 8192, 64, 1);
	CHECK((sts & 7) == 3, "unmapped source: CHANSTS halted");
	CHECK(rl(CH + 0x28) & 0x100, "CHANERR read-data error (0x%x)", rl(CH + 0x28));
	CHECK(cfg_read(0x180, 4) & 0x100, "CHANERR_INT mirrors it (0x%x)", cfg_read(0x180, 4));
	CHECK(read(efd, &cnt, 8) < 0 && errno == EAGAIN, "no interrupt for the failed copy");
	ioat_reset();
	CHECK((rq(CH + 0x08) & 7) == 3 && rl(CH + 0x28) == 0, "reset clears the error");
	/* and it works again */
	memset(dst, 0, 4096);
	sts = ioat_copy(d, iova, iova + 4096, iova + 8192, 4096, 0);
	CHECK((sts & 7) == 1 && memcmp(src, dst, 4096) == 0, "copy after the error");
	return 0;
}

static void *shared_buf(size_t len)
{
	return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
}

static int mode_cdev(void)
{
	char cdev[300];
	cdev_path(cdev, sizeof(cdev));
	int iommufd = open("/dev/iommu", O_RDWR);
	dev_fd = open(cdev, O_RDWR);
	CHECK(iommufd > 0 && dev_fd >= 0, "open /dev/iommu = %d, %s = %d", iommufd, cdev, dev_fd);
	/* as QEMU's open_cdev: the fd is the character device the sysfs dev file names */
	char p[256];
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/vfio-dev/vfio0/dev", bdf());
	unsigned maj = 0, min = 0;
	FILE *f = fopen(p, "r");
	if (f) {
		if (fscanf(f, "%u:%u", &maj, &min) != 2)
			maj = 0;
		fclose(f);
	}
	struct stat st;
	CHECK(fstat(dev_fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(maj, min), "fstat(cdev fd): char %u:%u as sysfs says",
	      major(st.st_rdev), minor(st.st_rdev));
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_GET_INFO, &info) < 0 && errno == EINVAL, "GET_INFO before BIND: EINVAL");
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = -2 };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0 && errno == EINVAL, "BIND iommufd -2: EINVAL");
	bind.iommufd = iommufd;
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND: devid %u", bind.out_devid);
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0 && errno == EINVAL, "BIND again: EINVAL");
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc) == 0, "IOAS_ALLOC: %u", alloc.out_ioas_id);
	struct vfio_device_attach_iommufd_pt att = { .argsz = sizeof(att), .pt_id = UINT32_MAX };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &att) < 0 && errno == ENOENT, "ATTACH to UINT32_MAX: ENOENT");
	att.pt_id = alloc.out_ioas_id;
	CHECK(ioctl(dev_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &att) == 0 && att.pt_id != alloc.out_ioas_id, "ATTACH: hwpt %u", att.pt_id);
	struct iommu_hw_info hw = { .size = sizeof(hw), .dev_id = bind.out_devid };
	CHECK(ioctl(iommufd, IOMMU_GET_HW_INFO, &hw) == 0, "GET_HW_INFO of the device: type %u", hw.out_data_type);
	size_t len = 1 << 20;
	void *buf = shared_buf(len);
	uint64_t iova = 1ULL << 32;
	struct iommu_ioas_map map = { .size = sizeof(map), .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				      .ioas_id = alloc.out_ioas_id, .user_va = (uintptr_t)buf, .length = len, .iova = iova };
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &map) == 0, "IOAS_MAP 1 MiB at 0x%llx", (unsigned long long)iova);
	int efd = ioat_init();
	if (efd < 0)
		return 1;
	drive_ioat(efd, buf, iova, len);
	/* the kernel cannot pin a BAR mapping (VM_IO|VM_PFNMAP): IOAS_MAP of it is EFAULT (QEMU tries it and warns) */
	struct iommu_ioas_map bmap = { .size = sizeof(bmap), .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				       .ioas_id = alloc.out_ioas_id, .user_va = (uintptr_t)bar0, .length = 16384 };
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &bmap) < 0 && errno == EFAULT, "IOAS_MAP of the BAR mapping: EFAULT (%s)", strerror(errno));
	struct vfio_device_detach_iommufd_pt det = { .argsz = sizeof(det) };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &det) == 0, "DETACH");
	/* a child inherits the BAR mapping and the fd: its trapped loads work too */
	pid_t c = fork();
	if (c == 0)
		_exit(rb(0x08) == 0x33 ? 0 : 1);
	int ws = 0;
	waitpid(c, &ws, 0);
	CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "forked child reads CBVER through the inherited mapping");
	/* dup: the same file; closing one fd leaves the other working */
	int d2 = dup(dev_fd);
	close(dev_fd);
	CHECK(ioctl(d2, VFIO_DEVICE_GET_INFO, &info) == 0, "GET_INFO through a dup after closing the original");
	dev_fd = d2;
	/* exec: the fd is inherited (without FD_CLOEXEC) and still the bound device */
	fcntl(dev_fd, F_SETFD, 0);
	pid_t x = fork();
	if (x == 0) {
		char n[16];
		snprintf(n, sizeof(n), "%d", dev_fd);
		execl("/proc/self/exe", "vfio_client", "execd", n, (char *)NULL);
		_exit(127);
	}
	waitpid(x, &ws, 0);
	CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "an exec'ed child uses the inherited device fd (status %d)", WEXITSTATUS(ws));
	/* the mapping holds the device file: closing the fd leaves the BAR working, munmap releases it */
	close(dev_fd);
	CHECK(rb(0x08) == 0x33, "the BAR works after close() while it is mapped");
	int again = open(cdev, O_RDWR);
	bind.iommufd = iommufd;
	CHECK(ioctl(again, VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0, "BIND from another open while the old file is mapped: refused (%s)", strerror(errno));
	close(again);
	munmap((void *)bar0, 16384);
	/* the device is released: it can be opened and bound again */
	dev_fd = open(cdev, O_RDWR);
	bind.iommufd = iommufd;
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "reopen and BIND after close");
	close(dev_fd);
	close(efd);
	close(iommufd);
	return failures ? 1 : 0;
}

static int mode_group(const char *container)
{
	int ctr = open(container, O_RDWR);
	CHECK(ctr >= 0 && ioctl(ctr, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "%s: API version 0", container);
	char p[64];
	snprintf(p, sizeof(p), "/dev/vfio/%d", group_of());
	int grp = open(p, O_RDWR);
	CHECK(grp >= 0, "open %s", p);
	CHECK(open(p, O_RDWR) < 0 && errno == EBUSY, "second open of the group: EBUSY");
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	CHECK(ioctl(grp, VFIO_GROUP_GET_STATUS, &gs) == 0 && gs.flags == VFIO_GROUP_FLAGS_VIABLE, "group viable");
	CHECK(ioctl(grp, VFIO_GROUP_SET_CONTAINER, &ctr) == 0, "SET_CONTAINER");
	CHECK(ioctl(ctr, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0, "TYPE1v2 supported");
	CHECK(ioctl(ctr, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU TYPE1v2");
	dev_fd = ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, bdf());
	CHECK(dev_fd >= 0 && (fcntl(dev_fd, F_GETFD) & FD_CLOEXEC), "GET_DEVICE_FD(%s) = %d, close-on-exec", bdf(), dev_fd);
	CHECK(ioctl(grp, VFIO_GROUP_GET_DEVICE_FD, "0000:00:1f.0") < 0 && errno == ENODEV, "GET_DEVICE_FD of another BDF: ENODEV");
	size_t len = 1 << 20;
	void *buf = shared_buf(len);
	uint64_t iova = 1ULL << 32;
	struct vfio_iommu_type1_dma_map map = { .argsz = sizeof(map), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
						.vaddr = (uintptr_t)buf, .iova = iova, .size = len };
	CHECK(ioctl(ctr, VFIO_IOMMU_MAP_DMA, &map) == 0, "MAP_DMA 1 MiB at 0x%llx", (unsigned long long)iova);
	int efd = ioat_init();
	if (efd < 0)
		return 1;
	drive_ioat(efd, buf, iova, len);
	struct vfio_iommu_type1_dma_unmap un = { .argsz = sizeof(un), .flags = VFIO_DMA_UNMAP_FLAG_ALL };
	CHECK(ioctl(ctr, VFIO_IOMMU_UNMAP_DMA, &un) == 0 && un.size == len, "UNMAP_DMA all: %llu bytes", (unsigned long long)un.size);
	return failures ? 1 : 0;
}

/* ---- faults that are not ours ---------------------------------------------------------------- */
static sigjmp_buf jb;
static volatile int caught;
static void on_segv(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	caught = si->si_addr == (void *)16 ? 1 : 2;
	siglongjmp(jb, 1);
}

static void on_bus(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)si; (void)uc;
	caught = 3;
	siglongjmp(jb, 1);
}

/* ns per trapped BAR load and per config-space pread (for the report; nothing checked but the values). */
static int mode_bench(void)
{
	char cdev[300];
	cdev_path(cdev, sizeof(cdev));
	int iommufd = open("/dev/iommu", O_RDWR);
	dev_fd = open(cdev, O_RDWR);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND");
	struct vfio_region_info b0 = { .argsz = sizeof(b0), .index = 0 };
	ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &b0);
	bar0 = mmap(NULL, b0.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev_fd, (off_t)b0.offset);
	cfg_write(4, 2, 0x0002);
	const int n = 20000;
	struct timespec t0, t1;
	int bad = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++)
		bad += rb(0x08) != 0x33;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double mmio = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < n; i++)
		bad += cfg_read(0, 2) != 0x8086;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double cfg = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
	CHECK(!bad, "trapped BAR load: %.0f ns; config pread: %.0f ns (%d each)", mmio, cfg, n);
	return failures ? 1 : 0;
}

/* Keeps a bound device with BAR0 mapped; on a line on stdin, checks the channel was not touched. */
static int mode_hold(void)
{
	char cdev[300];
	cdev_path(cdev, sizeof(cdev));
	int iommufd = open("/dev/iommu", O_RDWR);
	dev_fd = open(cdev, O_RDWR);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	if (ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		return 1;
	bar0 = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, dev_fd, 0);
	cfg_write(4, 2, 0x0002);
	wl(CH + 0x28, 0);
	uint8_t before = rb(CH + 0x04);
	printf("READY pid=%d\n", getpid());
	char line[16];
	if (!fgets(line, sizeof(line), stdin))
		return 1;
	CHECK(rb(CH + 0x04) == before && rb(0x08) == 0x33, "hold: the channel is as we left it");
	return failures ? 1 : 0;
}

static int mode_fault(void)
{
	char cdev[300];
	cdev_path(cdev, sizeof(cdev));
	int iommufd = open("/dev/iommu", O_RDWR);
	dev_fd = open(cdev, O_RDWR);
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	CHECK(ioctl(dev_fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0, "BIND");
	struct vfio_region_info b0 = { .argsz = sizeof(b0), .index = 0 };
	ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, &b0);
	/* the program installs its handler after the shim has its own (first BAR mapping) */
	volatile uint8_t *ro = mmap(NULL, b0.size, PROT_READ, MAP_SHARED, dev_fd, (off_t)b0.offset);
	CHECK(ro != MAP_FAILED, "mmap BAR0 read-only");
	cfg_write(4, 2, 0x0002);
	CHECK(ro[0x08] == 0x33, "a load through the read-only mapping");
	struct sigaction sa = { .sa_sigaction = on_segv, .sa_flags = SA_SIGINFO }, old;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGSEGV, &sa, &old) == 0, "program installs a SIGSEGV handler");
	struct sigaction now;
	CHECK(sigaction(SIGSEGV, NULL, &now) == 0 && now.sa_sigaction == on_segv, "sigaction reports the program's handler");
	if (sigsetjmp(jb, 1) == 0)
		*(volatile int *)16 = 1;
	CHECK(caught == 1, "a NULL-page store reaches the program's handler");
	caught = 0;
	if (sigsetjmp(jb, 1) == 0)
		ro[0x84] = 0x20;
	CHECK(caught == 2, "a store to the read-only BAR mapping reaches the program's handler");
	/* memory decode off: a BAR access faults as SIGBUS */
	struct sigaction sb = { .sa_sigaction = on_bus, .sa_flags = SA_SIGINFO };
	sigemptyset(&sb.sa_mask);
	sigaction(SIGBUS, &sb, NULL);
	cfg_write(4, 2, 0);
	caught = 0;
	if (sigsetjmp(jb, 1) == 0)
		(void)ro[0x08];
	CHECK(caught == 3, "with memory decode off a BAR load is SIGBUS");
	munmap((void *)ro, b0.size);
	close(dev_fd);
	close(iommufd);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "cdev";
	setvbuf(stdout, NULL, _IOLBF, 0);
	int r;
	if (strcmp(mode, "sysfs") == 0)
		r = mode_sysfs();
	else if (strcmp(mode, "cdev") == 0)
		r = mode_cdev();
	else if (strcmp(mode, "group") == 0)
		r = mode_group("/dev/vfio/vfio");
	else if (strcmp(mode, "compat") == 0)
		r = mode_group("/dev/iommu");
	else if (strcmp(mode, "fault") == 0)
		r = mode_fault();
	else if (strcmp(mode, "bench") == 0)
		r = mode_bench();
	else if (strcmp(mode, "hold") == 0)
		r = mode_hold();
	else if (strcmp(mode, "execd") == 0 && argc > 2) {
		/* the exec'ed half of cdev mode: the inherited fd is the bound device (config reads work) */
		dev_fd = atoi(argv[2]);
		struct vfio_device_info info = { .argsz = sizeof(info) };
		return ioctl(dev_fd, VFIO_DEVICE_GET_INFO, &info) == 0 && info.num_regions == 9 && cfg_read(0, 2) == 0x8086 ? 0 : 1;
	}
	else {
		fprintf(stderr, "usage: %s sysfs|cdev|group|compat|fault|bench\n", argv[0]);
		return 2;
	}
	printf("%s\n", r || failures ? "FAILED" : "PASSED");
	return r || failures ? 1 : 0;
}
