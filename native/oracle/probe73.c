/* probe73: the calls whose behaviour changed between 6.17 and 7.3 (dma-buf import and
 * the selftest exporter, NOIOMMU_GET_PA, vEVENTQ limits, the AMDv1 mock table), one line
 * per call: "name = rc errno [outputs]". Run on the real kernel (static build) and through
 * the shim under --abi 7.3 (dynamic build); the outputs must be identical
 * (src/server/probe73.test.ts holds the kernel's).
 *   gcc [-static] -O2 -I HEADERS -o probe73 probe73.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

static int fd;

static void show(const char *name, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void show(const char *name, int rc, const char *fmt, ...)
{
	char extra[256] = "";
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(extra, sizeof(extra), fmt, ap);
		va_end(ap);
	}
	printf("%s = %d %s%s%s\n", name, rc < 0 ? -1 : rc, rc < 0 ? strerrorname_np(errno) : "-", *extra ? " " : "", extra);
}

static int test_cmd(struct iommu_test_cmd *c)
{
	c->size = sizeof(*c);
	return ioctl(fd, IOMMU_TEST_CMD, c);
}

static __u32 ioas_alloc(void)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &c))
		exit(10);
	return c.out_ioas_id;
}

static int map_file(__u32 ioas, int dfd, __u64 start, __u64 len, __u64 *iova, int fixed)
{
	struct iommu_ioas_map_file c = { .size = sizeof(c), .ioas_id = ioas, .fd = dfd, .start = start, .length = len,
		.iova = *iova, .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | (fixed ? IOMMU_IOAS_MAP_FIXED_IOVA : 0) };
	int rc = ioctl(fd, IOMMU_IOAS_MAP_FILE, &c);
	*iova = c.iova;
	return rc;
}

/* The lowest fd number not open: where the next fd goes. */
static int next_fd(void)
{
	int f = dup(0);
	close(f);
	return f;
}

static void dmabuf(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DMABUF_GET };
	c.dmabuf_get.length = 0;
	show("dmabuf_get len=0", test_cmd(&c), NULL);
	c.dmabuf_get.length = 4096 * 512 + 1;
	show("dmabuf_get len=2M+1", test_cmd(&c), NULL);
	int want = next_fd();
	c.dmabuf_get.length = 1;
	c.dmabuf_get.open_flags = 0;
	int rc = test_cmd(&c);
	int d1 = want;
	show("dmabuf_get len=1 flags=0", rc, "fd%s cloexec=%d", fcntl(d1, F_GETFD) < 0 ? "-absent" : "-at-lowest",
	     fcntl(d1, F_GETFD) > 0);
	want = next_fd();
	c.dmabuf_get.length = 4 * 4096;
	c.dmabuf_get.open_flags = O_CLOEXEC;
	rc = test_cmd(&c);
	int dfd = want;
	show("dmabuf_get len=16K flags=O_CLOEXEC", rc, "cloexec=%d", fcntl(dfd, F_GETFD) > 0);
	char b[8];
	show("dmabuf read", (int)read(dfd, b, 8), NULL);
	show("dmabuf write", (int)write(dfd, b, 8), NULL);
	struct pollfd pf = { .fd = dfd, .events = POLLIN | POLLOUT };
	rc = poll(&pf, 1, 0);
	show("dmabuf poll", rc, "revents=0x%x", pf.revents);

	__u32 ioas = ioas_alloc();
	__u64 iova = 0;
	show("map_file dmabuf len=0", map_file(ioas, dfd, 0, 0, &iova, 0), NULL);
	show("map_file dmabuf past end", map_file(ioas, dfd, 4096, 4 * 4096, &iova, 0), NULL);
	show("map_file dmabuf sub-page start", map_file(ioas, dfd, 100, 4096, &iova, 0), NULL);
	iova = 0;
	show("map_file dmabuf whole, auto iova", map_file(ioas, dfd, 0, 4 * 4096, &iova, 0), "iova=0x%llx",
	     (unsigned long long)iova);
	__u64 iova2 = 1ull << 24;
	show("map_file dmabuf fixed", map_file(ioas, dfd, 4096, 2 * 4096, &iova2, 1), NULL);
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	show("mock_domain over a dma-buf area", test_cmd(&md), NULL);
	/* a fresh IOAS with the domain first */
	__u32 ioas2 = ioas_alloc();
	struct iommu_test_cmd md2 = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas2 };
	show("mock_domain", test_cmd(&md2), NULL);
	__u64 iova3 = 1ull << 25;
	show("map_file dmabuf with a domain", map_file(ioas2, dfd, 0, 4 * 4096, &iova3, 1), NULL);
	struct iommu_test_cmd ca = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas2,
		.create_access = { .flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES } };
	show("create_access", test_cmd(&ca), NULL);
	static __u8 page[4096];
	struct iommu_test_cmd ap = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = ca.create_access.out_access_fd,
		.access_pages = { .iova = 1ull << 25, .length = 4096, .uptr = (__u64)(unsigned long)page } };
	show("access_pages on dma-buf", test_cmd(&ap), NULL);
	struct iommu_test_cmd rw = { .op = IOMMU_TEST_OP_ACCESS_RW, .id = ca.create_access.out_access_fd,
		.access_rw = { .iova = 1ull << 25, .length = 16, .uptr = (__u64)(unsigned long)page } };
	show("access_rw on dma-buf", test_cmd(&rw), NULL);
	struct iommu_ioas_change_process cp = { .size = sizeof(cp) };
	show("change_process with dma-buf areas", ioctl(fd, IOMMU_IOAS_CHANGE_PROCESS, &cp), NULL);
	struct iommu_test_cmd rv = { .op = IOMMU_TEST_OP_DMABUF_REVOKE };
	rv.dmabuf_revoke.dmabuf_fd = 999;
	show("revoke fd 999", test_cmd(&rv), NULL);
	rv.dmabuf_revoke.dmabuf_fd = 0;
	show("revoke fd 0 (/dev/null)", test_cmd(&rv), NULL);
	rv.dmabuf_revoke.dmabuf_fd = fd;
	show("revoke the iommufd", test_cmd(&rv), NULL);
	rv.dmabuf_revoke.dmabuf_fd = dfd;
	rv.dmabuf_revoke.revoked = 1;
	show("revoke", test_cmd(&rv), NULL);
	__u64 iova4 = 1ull << 26;
	show("map_file revoked", map_file(ioas2, dfd, 0, 4096, &iova4, 1), NULL);
	struct iommu_hwpt_alloc ha = { .size = sizeof(ha), .dev_id = md2.mock_domain.out_idev_id, .pt_id = ioas2 };
	show("hwpt_alloc over a revoked area", ioctl(fd, IOMMU_HWPT_ALLOC, &ha), NULL);
	rv.dmabuf_revoke.revoked = 0;
	show("unrevoke", test_cmd(&rv), NULL);
	show("map_file unrevoked", map_file(ioas2, dfd, 0, 4096, &iova4, 1), NULL);
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = ioas2, .iova = 1ull << 25, .length = 4 * 4096 };
	show("unmap the revoked area", ioctl(fd, IOMMU_IOAS_UNMAP, &um), "length=%llu", (unsigned long long)um.length);
	close(dfd);
	close(d1);
}

static void noiommu(void)
{
	__u8 buf[64] = { 0 };
	struct iommu_ioas_noiommu_get_pa *c = (void *)buf;
	c->size = 8;
	show("noiommu_get_pa size=8", ioctl(fd, IOMMU_IOAS_NOIOMMU_GET_PA, c), NULL);
	c->size = sizeof(*c);
	c->ioas_id = 1;
	c->length = 4096;
	show("noiommu_get_pa", ioctl(fd, IOMMU_IOAS_NOIOMMU_GET_PA, c), NULL);
	c->size = 48;
	buf[44] = 1;
	show("noiommu_get_pa tail", ioctl(fd, IOMMU_IOAS_NOIOMMU_GET_PA, c), NULL);
	show("ioctl 0x96", ioctl(fd, _IO(IOMMUFD_TYPE, 0x96), buf), NULL);
}

static void veventq(void)
{
	__u32 ioas = ioas_alloc();
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	test_cmd(&md);
	struct iommu_hwpt_alloc ha = { .size = sizeof(ha), .dev_id = md.mock_domain.out_idev_id, .pt_id = ioas,
		.flags = IOMMU_HWPT_ALLOC_NEST_PARENT };
	show("nest parent", ioctl(fd, IOMMU_HWPT_ALLOC, &ha), NULL);
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST,
		.dev_id = md.mock_domain.out_idev_id, .hwpt_id = ha.out_hwpt_id };
	show("viommu", ioctl(fd, IOMMU_VIOMMU_ALLOC, &va), NULL);
	struct iommu_veventq_alloc q = { .size = sizeof(q), .viommu_id = va.out_viommu_id,
		.type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = (1u << 19) + 1 };
	show("veventq depth 2^19+1", ioctl(fd, IOMMU_VEVENTQ_ALLOC, &q), NULL);
	q.veventq_depth = 0xffffffff;
	show("veventq depth 2^32-1", ioctl(fd, IOMMU_VEVENTQ_ALLOC, &q), NULL);
	q.veventq_depth = 1u << 19;
	show("veventq depth 2^19", ioctl(fd, IOMMU_VEVENTQ_ALLOC, &q), NULL);
	char b[64];
	for (int n = 0; n <= 8; n += 4)
		show(n == 0 ? "veventq read 0 (empty)" : n == 4 ? "veventq read 4 (empty)" : "veventq read 8 (empty)",
		     (int)read(q.out_veventq_fd, b, n), NULL);
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = va.out_viommu_id,
		.dev_id = md.mock_domain.out_idev_id, .virt_id = 0x99 };
	show("vdevice", ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd), NULL);
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc na = { .size = sizeof(na), .dev_id = md.mock_domain.out_idev_id, .pt_id = va.out_viommu_id,
		.data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data), .data_uptr = (__u64)(unsigned long)&data };
	show("nested on viommu", ioctl(fd, IOMMU_HWPT_ALLOC, &na), NULL);
	struct iommu_test_cmd rp = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = md.mock_domain.out_stdev_id,
		.mock_domain_replace = { .pt_id = na.out_hwpt_id } };
	show("replace to nested", test_cmd(&rp), NULL);
	struct iommu_test_cmd tv = { .op = IOMMU_TEST_OP_TRIGGER_VEVENT, .trigger_vevent = { .dev_id = md.mock_domain.out_idev_id } };
	show("trigger", test_cmd(&tv), NULL);
	show("veventq read 8 (event of 12)", (int)read(q.out_veventq_fd, b, 8), NULL);
	show("veventq read 11", (int)read(q.out_veventq_fd, b, 11), NULL);
	show("veventq read 20", (int)read(q.out_veventq_fd, b, 20), NULL);
}

static void amdv1(void)
{
	__u32 ioas = ioas_alloc();
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	show("mock_domain", test_cmd(&md), NULL);
	struct iommu_test_cmd cm = { .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = 999,
		.check_map = { .iova = (1ull << 24) + 1, .length = 2048, .uptr = 4096 } };
	show("md_check_map bad id and unaligned", test_cmd(&cm), NULL);
	struct iommu_hwpt_selftest data = { .pagetable_type = MOCK_IOMMUPT_HUGE };
	struct iommu_hwpt_alloc ha = { .size = sizeof(ha), .dev_id = md.mock_domain.out_idev_id, .pt_id = ioas,
		.data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data), .data_uptr = (__u64)(unsigned long)&data };
	show("hwpt huge", ioctl(fd, IOMMU_HWPT_ALLOC, &ha), NULL);
	struct iommu_test_cmd rp = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = md.mock_domain.out_stdev_id,
		.mock_domain_replace = { .pt_id = ha.out_hwpt_id } };
	show("replace to huge", test_cmd(&rp), NULL);
	struct iommu_iova_range r[8];
	struct iommu_ioas_iova_ranges ir = { .size = sizeof(ir), .ioas_id = ioas, .num_iovas = 8,
		.allowed_iovas = (__u64)(unsigned long)r };
	int rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &ir);
	show("iova_ranges (huge attached)", rc, "n=%u align=%llu [0x%llx,0x%llx]", ir.num_iovas,
	     (unsigned long long)ir.out_iova_alignment, (unsigned long long)r[0].start, (unsigned long long)r[0].last);
	data.pagetable_type = 7;
	show("hwpt pagetable_type 7", ioctl(fd, IOMMU_HWPT_ALLOC, &ha), NULL);
	struct iommu_test_cmd mdf = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, .id = ioas,
		.mock_domain_flags = { .dev_flags = MOCK_FLAGS_DEVICE_NO_DIRTY << 1 } };
	show("mock_domain_flags 2 (HUGE_IOVA before 6.19)", test_cmd(&mdf), NULL);

	/* dirty granularity over 64 KiB of shared anonymous memory and of a 2 MiB huge page */
	__u32 ioas2 = ioas_alloc();
	struct iommu_test_cmd md2 = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas2 };
	test_cmd(&md2);
	struct iommu_hwpt_alloc dh = { .size = sizeof(dh), .dev_id = md2.mock_domain.out_idev_id, .pt_id = ioas2,
		.flags = IOMMU_HWPT_ALLOC_DIRTY_TRACKING };
	show("hwpt dirty", ioctl(fd, IOMMU_HWPT_ALLOC, &dh), NULL);
	struct iommu_test_cmd rp2 = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = md2.mock_domain.out_stdev_id,
		.mock_domain_replace = { .pt_id = dh.out_hwpt_id } };
	test_cmd(&rp2);
	for (int huge = 0; huge < 2; huge++) {
		size_t len = huge ? 2u << 20 : 64 << 10;
		void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0), -1, 0);
		if (buf == MAP_FAILED) {
			show(huge ? "mmap huge" : "mmap", -1, NULL);
			continue;
		}
		memset(buf, 1, len);
		__u64 iova = huge ? 1ull << 30 : 1ull << 28;
		struct iommu_ioas_map m = { .size = sizeof(m), .ioas_id = ioas2, .user_va = (__u64)(unsigned long)buf,
			.length = len, .iova = iova,
			.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA };
		show(huge ? "map huge" : "map 64K", ioctl(fd, IOMMU_IOAS_MAP, &m), NULL);
		struct iommu_hwpt_set_dirty_tracking sd = { .size = sizeof(sd), .hwpt_id = dh.out_hwpt_id,
			.flags = IOMMU_HWPT_DIRTY_TRACKING_ENABLE };
		ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd);
		__u64 bits = 1; /* the first 2 KiB item */
		struct iommu_test_cmd dt = { .op = IOMMU_TEST_OP_DIRTY, .id = dh.out_hwpt_id,
			.dirty = { .iova = iova, .length = 2048, .page_size = 2048, .uptr = (__u64)(unsigned long)&bits } };
		show("dirty one item", test_cmd(&dt), "nr=%llu", (unsigned long long)dt.dirty.out_nr_dirty);
		static __u64 bm[1024];
		memset(bm, 0, sizeof(bm));
		struct iommu_hwpt_get_dirty_bitmap gd = { .size = sizeof(gd), .hwpt_id = dh.out_hwpt_id, .iova = iova,
			.length = len, .page_size = 4096, .data = (__u64)(unsigned long)bm };
		rc = ioctl(fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd);
		int n = 0;
		for (size_t i = 0; i < len / 4096; i++)
			n += !!(bm[i / 64] & (1ull << (i % 64)));
		show(huge ? "dirty pages reported (huge)" : "dirty pages reported (64K)", rc, "pages=%d", n);
		/* after turning tracking off, a mark set before still reads back (no tracking check) */
		test_cmd(&dt);
		sd.flags = 0;
		ioctl(fd, IOMMU_HWPT_SET_DIRTY_TRACKING, &sd);
		memset(bm, 0, sizeof(bm));
		rc = ioctl(fd, IOMMU_HWPT_GET_DIRTY_BITMAP, &gd);
		n = 0;
		for (size_t i = 0; i < len / 4096; i++)
			n += !!(bm[i / 64] & (1ull << (i % 64)));
		show("dirty read with tracking off", rc, "pages=%d", n);
		struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = ioas2, .iova = iova, .length = len };
		ioctl(fd, IOMMU_IOAS_UNMAP, &um);
		munmap(buf, len);
	}
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		return 1;
	dmabuf();
	noiommu();
	veventq();
	amdv1();
	return 0;
}
