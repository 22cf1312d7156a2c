/* failpoints: the fault-injection points of every call the iommufd_fail_nth cases sweep, call by
 * call. Each case is a sequence of calls (the ones its test makes, with the same arguments); the
 * calls before the test arms fail-nth are its setup. For each armed call, in a fresh child that
 * first replays the calls before it, /proc/thread-self/fail-nth is armed with k = 1, 2, ... and the
 * call runs once; a consumed counter means point k fired, and what the call returned is printed
 * ("CASE CALL k RESULT", ok = the failure was absorbed). The first k whose counter survives ends
 * the call: "CASE CALL points N". "CASE sweep S" is the sweep length the case's test sees: the sum
 * of its calls' points plus one (the last value it arms finds its counter unconsumed).
 * Run on the oracle kernel (static build) and through the shim (dynamic build): the two outputs
 * compare point by point.
 *   gcc [-static] -O2 -I HEADERS -o failpoints failpoints.c      (HEADERS: iommufd-emu headers --abi X)
 *   failpoints [CASE...]                                           (default: every case)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

#define BUF (2 * 1024 * 1024)
#define PAGE 4096
#define SMALL 262144
static void *buffer;
static int mfd = -1;

/* The state a sequence builds up (in the child that replays it). */
static int fd = -1;
static __u32 ioas, ioas2, stdev, stdev2, hwpt, idev, access_fd, access_pages_id;
static __u32 viommu, fault_id, fault_fd, veventq_fd, test_hwpt;
static __u64 iova;

static int test_cmd(struct iommu_test_cmd *c) { c->size = sizeof(*c); return ioctl(fd, IOMMU_TEST_CMD, c); }

static int c_open(void) { fd = open("/dev/iommu", O_RDWR); return fd < 0 ? -1 : 0; }
static int alloc_ioas(__u32 *id)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &c);
	*id = c.out_ioas_id;
	return rc;
}
static int c_ioas(void) { return alloc_ioas(&ioas); }
static int c_ioas2(void) { return alloc_ioas(&ioas2); }
static int c_temp_limit(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT, .memory_limit = { .limit = 32 } };
	return test_cmd(&c);
}
static int c_iova_ranges(void)
{
	struct iommu_iova_range r[10];
	struct iommu_ioas_iova_ranges c = { .size = sizeof(c), .ioas_id = ioas, .num_iovas = 10,
		.allowed_iovas = (__u64)(unsigned long)r };
	return ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &c);
}
static int c_allow(void)
{
	struct iommu_iova_range r = { .start = 16 * 1024, .last = BUF + 16 * 1024 * 600 - 1 };
	struct iommu_ioas_allow_iovas c = { .size = sizeof(c), .ioas_id = ioas, .num_iovas = 1,
		.allowed_iovas = (__u64)(unsigned long)&r };
	return ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &c);
}
static int map(__u32 id, __u64 len, int fixed)
{
	struct iommu_ioas_map c = { .size = sizeof(c), .ioas_id = id, .user_va = (__u64)(unsigned long)buffer,
		.length = len, .iova = fixed ? MOCK_APERTURE_START : 0,
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | (fixed ? IOMMU_IOAS_MAP_FIXED_IOVA : 0) };
	int rc = ioctl(fd, IOMMU_IOAS_MAP, &c);
	iova = c.iova;
	return rc;
}
static int c_map_big(void) { return map(ioas, BUF, 0); }
static int c_map_small(void) { return map(ioas, SMALL, 0); }
static int c_map_fixed(void) { return map(ioas, PAGE, 1); }
static int c_map_fixed2(void) { return map(ioas2, PAGE, 1); }
static int c_map_file(void)
{
#ifdef IOMMU_IOAS_MAP_FILE
	struct iommu_ioas_map_file c = { .size = sizeof(c), .ioas_id = ioas, .fd = mfd, .start = 0, .length = SMALL,
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE };
	int rc = ioctl(fd, IOMMU_IOAS_MAP_FILE, &c);
	iova = c.iova;
	return rc;
#else
	errno = ENOTTY;
	return -1;
#endif
}
static int c_copy(void)
{
	struct iommu_ioas_copy c = { .size = sizeof(c), .flags = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.dst_ioas_id = ioas, .src_ioas_id = ioas, .src_iova = iova, .length = 10 * sizeof(struct iommu_iova_range) };
	return ioctl(fd, IOMMU_IOAS_COPY, &c);
}
static int c_unmap(void)
{
	struct iommu_ioas_unmap c = { .size = sizeof(c), .ioas_id = ioas, .iova = iova, .length = BUF };
	return ioctl(fd, IOMMU_IOAS_UNMAP, &c);
}
/* Unmapping what is gone: ENOENT is the call's normal result here. */
static int c_unmap_again(void) { int rc = c_unmap(); return rc && errno == ENOENT ? 0 : rc ? rc : -1; }
static int mock_domain(__u32 *sid, __u32 flags)
{
	struct iommu_test_cmd c = { .op = flags ? IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS : IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	c.mock_domain_flags.dev_flags = flags;
	int rc = test_cmd(&c);
	*sid = c.mock_domain.out_stdev_id;
	hwpt = c.mock_domain.out_hwpt_id;
	idev = c.mock_domain.out_idev_id;
	return rc;
}
static int c_mock_domain(void) { return mock_domain(&stdev, 0); }
static int c_mock_domain2(void) { return mock_domain(&stdev2, 0); }
static int c_mock_domain_pasid(void)
{
#ifdef IOMMU_HW_QUEUE_ALLOC /* 7.3's device case makes a PASID-capable mock device */
	return mock_domain(&stdev, MOCK_FLAGS_DEVICE_PASID);
#else
	return mock_domain(&stdev, 0);
#endif
}
static int destroy(__u32 id)
{
	struct iommu_destroy c = { .size = sizeof(c), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &c);
}
static int c_destroy_stdev(void) { return destroy(stdev); }
static int c_destroy_stdev2(void) { return destroy(stdev2); }
static int create_access(__u32 flags)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas, .create_access = { .flags = flags } };
	int rc = test_cmd(&c);
	access_fd = c.create_access.out_access_fd;
	return rc;
}
static int c_create_access(void) { return create_access(0); }
static int c_create_access_pin(void) { return create_access(MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES); }
static int rw(void *p, __u64 len, __u32 flags)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_RW, .id = access_fd,
		.access_rw = { .iova = iova, .length = len, .uptr = (__u64)(unsigned long)p, .flags = flags } };
	return test_cmd(&c);
}
static __u16 tmp[32];
static __u64 tmp_big[4096];
static int c_rw_read(void) { return rw(tmp, sizeof(tmp), 0); }
static int c_rw_write(void) { return rw(tmp, sizeof(tmp), MOCK_ACCESS_RW_WRITE); }
static int c_rw_slow(void) { return rw(tmp, sizeof(tmp), MOCK_ACCESS_RW_SLOW_PATH); }
static int c_rw_slow_write(void) { return rw(tmp, sizeof(tmp), MOCK_ACCESS_RW_SLOW_PATH | MOCK_ACCESS_RW_WRITE); }
static int c_rw_big(void) { return rw(tmp_big, sizeof(tmp_big), MOCK_ACCESS_RW_SLOW_PATH); }
static int c_access_pages(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = access_fd,
		.access_pages = { .iova = iova, .length = BUF, .uptr = (__u64)(unsigned long)buffer } };
	int rc = test_cmd(&c);
	access_pages_id = c.access_pages.out_access_pages_id;
	return rc;
}
static int c_destroy_access_pages(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, .id = access_fd,
		.destroy_access_pages = { .access_pages_id = access_pages_id } };
	return test_cmd(&c);
}
static int c_close_access(void) { return close(access_fd); }
static int c_hw_info(void)
{
	struct iommu_test_hw_info info;
	struct iommu_hw_info c = { .size = sizeof(c), .dev_id = idev, .data_len = sizeof(info),
		.data_uptr = (__u64)(unsigned long)&info };
	return ioctl(fd, IOMMU_GET_HW_INFO, &c);
}
static int hwpt_alloc(__u32 *out, __u32 pt, __u32 flags, __u32 ft, __u32 type, void *data, __u32 len)
{
	struct iommu_hwpt_alloc c = { .size = sizeof(c), .flags = flags, .dev_id = idev, .pt_id = pt,
		.data_type = type, .data_len = len, .data_uptr = (__u64)(unsigned long)data, .fault_id = ft };
	int rc = ioctl(fd, IOMMU_HWPT_ALLOC, &c);
	*out = c.out_hwpt_id;
	return rc;
}
static int replace(__u32 pt)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev, .mock_domain_replace = { .pt_id = pt } };
	return test_cmd(&c);
}
static int c_replace_ioas2(void) { return replace(ioas2); }
static int c_replace_hwpt(void) { return replace(hwpt); }
#ifdef IOMMU_HW_QUEUE_ALLOC
/* 7.3's device case: PASID-capable HWPTs, a vIOMMU and what hangs off it, PASID attach. */
static int c_hwpt_pasid(void) { return hwpt_alloc(&hwpt, ioas, IOMMU_HWPT_ALLOC_PASID, 0, IOMMU_HWPT_DATA_NONE, NULL, 0); }
static int c_hwpt_parent(void)
{
	return hwpt_alloc(&hwpt, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT | IOMMU_HWPT_ALLOC_PASID, 0, IOMMU_HWPT_DATA_NONE, NULL, 0);
}
static int c_viommu(void)
{
	struct iommu_viommu_alloc c = { .size = sizeof(c), .type = IOMMU_VIOMMU_TYPE_SELFTEST, .dev_id = idev, .hwpt_id = hwpt };
	int rc = ioctl(fd, IOMMU_VIOMMU_ALLOC, &c);
	viommu = c.out_viommu_id;
	return rc;
}
static int c_vdevice(void)
{
	struct iommu_vdevice_alloc c = { .size = sizeof(c), .dev_id = idev, .viommu_id = viommu, .virt_id = 0 };
	return ioctl(fd, IOMMU_VDEVICE_ALLOC, &c);
}
static int c_hw_queue(void)
{
	struct iommu_hw_queue_alloc c = { .size = sizeof(c), .viommu_id = viommu, .type = IOMMU_HW_QUEUE_TYPE_SELFTEST,
		.index = 0, .nesting_parent_iova = MOCK_APERTURE_START, .length = PAGE };
	return ioctl(fd, IOMMU_HW_QUEUE_ALLOC, &c);
}
static int c_fault_alloc(void)
{
	struct iommu_fault_alloc c = { .size = sizeof(c) };
	int rc = ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &c);
	fault_id = c.out_fault_id;
	fault_fd = c.out_fault_fd;
	return rc;
}
static int c_close_fault(void) { return close(fault_fd); }
static int c_hwpt_fault(void)
{
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	__u32 id;
	return hwpt_alloc(&id, hwpt, IOMMU_HWPT_FAULT_ID_VALID, fault_id, IOMMU_HWPT_DATA_SELFTEST, &data, sizeof(data));
}
static int c_veventq(void)
{
	struct iommu_veventq_alloc c = { .size = sizeof(c), .type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 2,
		.viommu_id = viommu };
	int rc = ioctl(fd, IOMMU_VEVENTQ_ALLOC, &c);
	veventq_fd = c.out_veventq_fd;
	return rc;
}
static int c_close_veventq(void) { return close(veventq_fd); }
static int c_hwpt_test(void) { return hwpt_alloc(&test_hwpt, ioas, IOMMU_HWPT_ALLOC_PASID, 0, IOMMU_HWPT_DATA_NONE, NULL, 0); }
static int c_pasid_attach(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_PASID_ATTACH, .id = stdev, .pasid_attach = { .pasid = 200, .pt_id = hwpt } };
	return test_cmd(&c);
}
static int c_pasid_replace(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_PASID_REPLACE, .id = stdev, .pasid_replace = { .pasid = 200, .pt_id = test_hwpt } };
	return test_cmd(&c);
}
static int c_pasid_detach(void)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_PASID_DETACH, .id = stdev, .pasid_detach = { .pasid = 200 } };
	return test_cmd(&c);
}
#else
static int c_hwpt(void) { return hwpt_alloc(&hwpt, ioas, 0, 0, IOMMU_HWPT_DATA_NONE, NULL, 0); }
#endif

struct call { const char *name; int (*fn)(void); };
#define ARMED { "", NULL } /* the calls after it are swept */
struct seq { const char *name; struct call calls[32]; };

static const struct seq cases[] = {
	{ "basic", { ARMED, { "open", c_open }, { "ioas_alloc", c_ioas }, { "iova_ranges", c_iova_ranges },
		{ "allow_iovas", c_allow }, { "map", c_map_big }, { "copy", c_copy }, { "unmap", c_unmap },
		{ "unmap_gone", c_unmap_again } } },
	{ "map_domain", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit }, ARMED,
		{ "mock_domain", c_mock_domain }, { "map", c_map_small }, { "destroy_stdev", c_destroy_stdev },
		{ "mock_domain_again", c_mock_domain } } },
#ifdef IOMMU_IOAS_MAP_FILE
	{ "map_file_domain", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit }, ARMED,
		{ "mock_domain", c_mock_domain }, { "map_file", c_map_file }, { "destroy_stdev", c_destroy_stdev },
		{ "mock_domain_again", c_mock_domain } } },
#endif
	{ "map_two_domains", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit },
		{ "mock_domain", c_mock_domain }, ARMED, { "mock_domain2", c_mock_domain2 }, { "map", c_map_small },
		{ "destroy_stdev", c_destroy_stdev }, { "destroy_stdev2", c_destroy_stdev2 },
		{ "mock_domain_again", c_mock_domain }, { "mock_domain2_again", c_mock_domain2 } } },
	{ "access_rw", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit },
		{ "map", c_map_small }, ARMED, { "create_access", c_create_access }, { "rw_read", c_rw_read },
		{ "rw_write", c_rw_write }, { "rw_slow", c_rw_slow }, { "rw_slow_write", c_rw_slow_write },
		{ "rw_big", c_rw_big }, { "close_access", c_close_access } } },
	{ "access_pin", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit },
		{ "map", c_map_big }, { "create_access", c_create_access_pin }, ARMED, { "access_pages", c_access_pages },
		{ "destroy_access_pages", c_destroy_access_pages }, { "close_access", c_close_access } } },
	{ "access_pin_domain", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "temp_limit", c_temp_limit },
		{ "mock_domain", c_mock_domain }, { "map", c_map_big }, { "create_access", c_create_access_pin }, ARMED,
		{ "access_pages", c_access_pages }, { "destroy_access_pages", c_destroy_access_pages },
		{ "close_access", c_close_access }, { "destroy_stdev", c_destroy_stdev } } },
	{ "device", { { "open", c_open }, { "ioas_alloc", c_ioas }, { "ioas_alloc2", c_ioas2 }, { "map", c_map_fixed },
		{ "map2", c_map_fixed2 }, ARMED, { "mock_domain", c_mock_domain_pasid }, { "get_hw_info", c_hw_info },
#ifdef IOMMU_HW_QUEUE_ALLOC
		{ "hwpt_alloc", c_hwpt_pasid }, { "replace_ioas2", c_replace_ioas2 }, { "replace_hwpt", c_replace_hwpt },
		{ "hwpt_nest_parent", c_hwpt_parent }, { "viommu_alloc", c_viommu }, { "vdevice_alloc", c_vdevice },
		{ "hw_queue_alloc", c_hw_queue }, { "fault_alloc", c_fault_alloc }, { "close_fault", c_close_fault },
		{ "hwpt_fault", c_hwpt_fault }, { "veventq_alloc", c_veventq }, { "close_veventq", c_close_veventq },
		{ "hwpt_alloc_test", c_hwpt_test }, { "pasid_attach", c_pasid_attach }, { "pasid_replace", c_pasid_replace },
		{ "pasid_detach", c_pasid_detach } } },
#else
		{ "hwpt_alloc", c_hwpt }, { "replace_ioas2", c_replace_ioas2 }, { "replace_hwpt", c_replace_hwpt } } },
#endif
};
#define NCASES (int)(sizeof(cases) / sizeof(cases[0]))

static int arm(unsigned k)
{
	int f = open("/proc/thread-self/fail-nth", O_RDWR);
	char b[16];
	int n = snprintf(b, sizeof(b), "%u", k);
	return pwrite(f, b, n, 0) == n ? f : -1;
}

/* As the fail_nth selftest sets fault injection up: any allocation may fail, quietly. */
static void setup_fault_injection(void)
{
	static const char *files[][2] = {
		{ "/sys/kernel/debug/failslab/ignore-gfp-wait", "N" },
		{ "/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait", "N" },
		{ "/sys/kernel/debug/fail_page_alloc/ignore-gfp-highmem", "N" },
		{ "/sys/kernel/debug/failslab/verbose", "0" },
		{ "/sys/kernel/debug/fail_page_alloc/verbose", "0" },
		{ "/sys/kernel/debug/fail_usercopy/verbose", "0" },
		{ "/sys/kernel/debug/fail_iommufd/verbose", "0" },
	};
	for (unsigned i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		int f = open(files[i][0], O_WRONLY);
		if (f >= 0) {
			if (write(f, files[i][1], 1) != 1)
				perror(files[i][0]);
			close(f);
		}
	}
}

/* Point k of call c of case q: 0 fired (printed), 2 not reached, 3 the replay failed. */
static int probe(const struct seq *q, int c, unsigned k)
{
	pid_t p = fork();
	if (!p) {
		for (int i = 0; i < c; i++)
			if (q->calls[i].fn && q->calls[i].fn()) {
				printf("%s %s setup-failed-at %s %s\n", q->name, q->calls[c].name, q->calls[i].name,
				       strerrorname_np(errno));
				_exit(3);
			}
		int f = arm(k);
		errno = 0;
		int rc = q->calls[c].fn();
		int e = errno;
		char b[16] = "";
		/* As the selftest: a counter left over means no point fired (the read's own copy-out
		 * may consume it: EFAULT, also "not fired"). */
		ssize_t n = pread(f, b, sizeof(b) - 1, 0);
		if (!(n > 0 && b[0] == '0')) {
			pwrite(f, "0", 1, 0);
			_exit(2);
		}
		printf("%s %s %u %s\n", q->name, q->calls[c].name, k, rc ? strerrorname_np(e) : "ok");
		_exit(0);
	}
	int st;
	waitpid(p, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
}

int main(int argc, char **argv)
{
	setup_fault_injection();
	/* Populated before any sweep, as the selftest's first, unarmed run leaves them. */
	buffer = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(buffer, 1, BUF);
	mfd = memfd_create("failpoints", 0);
	if (ftruncate(mfd, BUF))
		perror("ftruncate");
	void *m = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	memset(m, 1, BUF);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int qi = 0; qi < NCASES; qi++) {
		const struct seq *q = &cases[qi];
		int want = argc < 2;
		for (int a = 1; a < argc; a++)
			want |= strcmp(argv[a], q->name) == 0;
		if (!want)
			continue;
		int armed = 0, sum = 0, broken = 0;
		for (int c = 0; c < 32 && q->calls[c].name; c++) {
			if (!q->calls[c].fn)
				armed = 1;
			if (!armed || !q->calls[c].fn)
				continue;
			unsigned k;
			int r = 0;
			for (k = 1; k <= 400 && (r = probe(q, c, k)) == 0; k++)
				;
			if (r == 3)
				broken = 1;
			printf("%s %s points %u\n", q->name, q->calls[c].name, k - 1);
			sum += k - 1;
		}
		printf("%s sweep %d%s\n", q->name, sum + 1, broken ? " (a replay failed)" : "");
	}
	return 0;
}
