/* failpoints: the fault-injection points of single iommufd calls, one by one. For each
 * step of a fixed sequence (the calls the fail_nth selftests make), in a fresh child that
 * first replays the steps before it, /proc/thread-self/fail-nth is armed with k = 1, 2, ...
 * and the step runs once; a consumed counter means point k fired, and what the call
 * returned is printed ("STEP k errno"). The first k whose counter survives ends the step:
 * it has k - 1 points. Run on the oracle kernel (static build) and through the shim
 * (dynamic build), the two outputs compare point by point.
 *   gcc [-static] -O2 -I HEADERS -o failpoints failpoints.c
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
static void *buffer;
static int mfd = -1;
static int fd = -1;
static __u32 ioas, ioas2, stdev, hwpt, idev, access_fd;
static __u64 iova, iova2;

static int ioas_alloc(__u32 *id)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &c);
	*id = c.out_ioas_id;
	return rc;
}

static int map(__u32 id, __u64 *out, int fixed, __u64 at)
{
	struct iommu_ioas_map c = { .size = sizeof(c), .ioas_id = id, .user_va = (__u64)(unsigned long)buffer,
		.length = BUF, .iova = at,
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | (fixed ? IOMMU_IOAS_MAP_FIXED_IOVA : 0) };
	int rc = ioctl(fd, IOMMU_IOAS_MAP, &c);
	*out = c.iova;
	return rc;
}

/* The steps: each returns the call's result (0 or -1 with errno). */
static int s_open(void) { fd = open("/dev/iommu", O_RDWR); return fd < 0 ? -1 : 0; }
static int s_ioas_alloc(void) { return ioas_alloc(&ioas); }
static int s_iova_ranges(void)
{
	struct iommu_ioas_iova_ranges c = { .size = sizeof(c), .ioas_id = ioas };
	int rc = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &c);
	return rc && errno == EMSGSIZE ? 0 : rc;
}
static int s_allow(void)
{
	struct iommu_iova_range r = { .start = 1ull << 24, .last = (1ull << 31) - 1 }; /* the mock aperture */
	struct iommu_ioas_allow_iovas c = { .size = sizeof(c), .ioas_id = ioas, .num_iovas = 1,
		.allowed_iovas = (__u64)(unsigned long)&r };
	return ioctl(fd, IOMMU_IOAS_ALLOW_IOVAS, &c);
}
static int s_map(void) { return map(ioas, &iova, 0, 0); }
static int s_copy(void)
{
	struct iommu_ioas_copy c = { .size = sizeof(c), .flags = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.dst_ioas_id = ioas, .src_ioas_id = ioas, .src_iova = iova, .length = 4096 };
	return ioctl(fd, IOMMU_IOAS_COPY, &c);
}
static int s_unmap(void)
{
	struct iommu_ioas_unmap c = { .size = sizeof(c), .ioas_id = ioas, .iova = iova, .length = BUF };
	return ioctl(fd, IOMMU_IOAS_UNMAP, &c);
}
static int s_mock_domain(void)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	int rc = ioctl(fd, IOMMU_TEST_CMD, &c);
	stdev = c.mock_domain.out_stdev_id;
	hwpt = c.mock_domain.out_hwpt_id;
	idev = c.mock_domain.out_idev_id;
	return rc;
}
static int s_map_domain(void) { return map(ioas, &iova2, 1, 1ull << 24); }
static int s_map_file(void)
{
	struct iommu_ioas_map_file c = { .size = sizeof(c), .ioas_id = ioas, .fd = mfd, .start = 0, .length = BUF,
		.iova = 1ull << 26, .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_FIXED_IOVA };
	return ioctl(fd, IOMMU_IOAS_MAP_FILE, &c);
}
static int s_hwpt_alloc(void)
{
	struct iommu_hwpt_alloc c = { .size = sizeof(c), .dev_id = idev, .pt_id = ioas };
	return ioctl(fd, IOMMU_HWPT_ALLOC, &c);
}
static int s_ioas2(void) { return ioas_alloc(&ioas2); }
static int s_replace(void)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
		.mock_domain_replace = { .pt_id = ioas2 } };
	return ioctl(fd, IOMMU_TEST_CMD, &c);
}
static int s_create_access(void)
{
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas,
		.create_access = { .flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES } };
	int rc = ioctl(fd, IOMMU_TEST_CMD, &c);
	access_fd = c.create_access.out_access_fd;
	return rc;
}
static int s_access_pages(void)
{
	static __u8 tmp[4096];
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = access_fd,
		.access_pages = { .iova = 1ull << 24, .length = 4096, .uptr = (__u64)(unsigned long)tmp } };
	return ioctl(fd, IOMMU_TEST_CMD, &c);
}
static int s_destroy_stdev(void)
{
	struct iommu_destroy c = { .size = sizeof(c), .id = stdev };
	return ioctl(fd, IOMMU_DESTROY, &c);
}

static const struct { const char *name; int (*fn)(void); } steps[] = {
	{ "open", s_open }, { "ioas_alloc", s_ioas_alloc }, { "iova_ranges", s_iova_ranges },
	{ "allow_iovas", s_allow }, { "map", s_map }, { "copy", s_copy }, { "unmap", s_unmap },
	{ "mock_domain", s_mock_domain }, { "map_domain", s_map_domain }, { "map_file_domain", s_map_file },
	{ "hwpt_alloc", s_hwpt_alloc }, { "ioas_alloc2", s_ioas2 }, { "replace", s_replace },
	{ "create_access", s_create_access }, { "access_pages", s_access_pages }, { "destroy_stdev", s_destroy_stdev },
};
#define NSTEPS (int)(sizeof(steps) / sizeof(steps[0]))

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

int main(int argc, char **argv)
{
	setup_fault_injection();
	int maxk = argc > 1 ? atoi(argv[1]) : 400;
	buffer = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(buffer, 1, BUF);
	mfd = memfd_create("failpoints", 0);
	ftruncate(mfd, BUF);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int s = 0; s < NSTEPS; s++) {
		int k;
		for (k = 1; k <= maxk; k++) {
			pid_t p = fork();
			if (!p) {
				for (int i = 0; i < s; i++)
					if (steps[i].fn()) {
						printf("%s setup-failed-at %s %s\n", steps[s].name, steps[i].name, strerror(errno));
						_exit(3);
					}
				int f = arm(k);
				errno = 0;
				int rc = steps[s].fn();
				int e = errno;
				char b[16] = "";
				/* As the selftest: a counter left over means no point fired (the read's own
				 * copy-out may consume it: EFAULT, also "not fired"). */
				ssize_t n = pread(f, b, sizeof(b) - 1, 0);
				int fired = n > 0 && b[0] == '0';
				if (!fired) {
					pwrite(f, "0", 1, 0);
					_exit(2);
				}
				printf("%s %d %s\n", steps[s].name, k, rc ? strerrorname_np(e) : "ok");
				_exit(0);
			}
			int st;
			waitpid(p, &st, 0);
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				break;
		}
		printf("%s points %d\n", steps[s].name, k - 1);
	}
	return 0;
}
