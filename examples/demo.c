/*
 * iommufd-emu demo: an ordinary C program using /dev/iommu. Run it with
 *   npm start                      (builds it and runs it through `iommufd-emu run --trace`)
 * It is built against headers generated from the emulator's uAPI table
 * (`iommufd-emu headers DIR`): linux/iommufd.h and iommufd_test.h.
 *
 * Steps: open /dev/iommu, allocate an IOAS, map a buffer, create a mock
 * device with its own domain (IOMMU_TEST_CMD / MOCK_DOMAIN), allocate a
 * nesting-parent HWPT for it, open a fault queue and read it, then tear
 * everything down.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

static int failures;

static int check(const char *what, int rc)
{
	if (rc < 0) {
		printf("demo: %-28s failed: %s\n", what, strerror(errno));
		failures++;
	} else {
		printf("demo: %-28s ok\n", what);
	}
	return rc;
}

static int destroy(int fd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (check("open /dev/iommu", fd) < 0)
		return 1;

	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	if (check("IOMMU_IOAS_ALLOC", ioctl(fd, IOMMU_IOAS_ALLOC, &alloc)) < 0)
		return 1;
	__u32 ioas = alloc.out_ioas_id;

	size_t len = 64 * 1024;
	char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(buf, 0x5a, len);

	/* a mock device with its own paging domain attached to the IOAS */
	struct iommu_test_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	check("IOMMU_TEST_CMD(MOCK_DOMAIN)", ioctl(fd, IOMMU_TEST_CMD, &mock));
	__u32 stdev = mock.mock_domain.out_stdev_id;
	__u32 idev = mock.mock_domain.out_idev_id;

	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (__u64)(unsigned long)buf,
		.length = len,
	};
	check("IOMMU_IOAS_MAP", ioctl(fd, IOMMU_IOAS_MAP, &map));
	printf("demo: buffer %p mapped at IOVA 0x%llx\n", (void *)buf, (unsigned long long)map.iova);

	/* the device's IOMMU translates that IOVA to the buffer's pages */
	struct iommu_test_cmd chk = { .size = sizeof(chk), .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = mock.mock_domain.out_hwpt_id };
	chk.check_map.iova = map.iova;
	chk.check_map.length = len;
	chk.check_map.uptr = (__u64)(unsigned long)buf;
	check("IOMMU_TEST_CMD(MD_CHECK_MAP)", ioctl(fd, IOMMU_TEST_CMD, &chk));

	struct iommu_hwpt_alloc hwpt = {
		.size = sizeof(hwpt),
		.flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
		.dev_id = idev,
		.pt_id = ioas,
	};
	check("IOMMU_HWPT_ALLOC(nest parent)", ioctl(fd, IOMMU_HWPT_ALLOC, &hwpt));

	/* a fault queue: its fd is a real fd of this process (read never blocks) */
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (check("IOMMU_FAULT_QUEUE_ALLOC", ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa)) == 0) {
		struct iommu_hwpt_pgfault rec;
		ssize_t n = read((int)fa.out_fault_fd, &rec, sizeof(rec));
		printf("demo: read(fault fd %u) = %zd (no faults pending)\n", fa.out_fault_fd, n);
		check("close(fault fd)", close((int)fa.out_fault_fd));
		check("IOMMU_DESTROY(fault)", destroy(fd, fa.out_fault_id));
	}

	struct iommu_ioas_unmap unmap = { .size = sizeof(unmap), .ioas_id = ioas, .iova = map.iova, .length = len };
	check("IOMMU_IOAS_UNMAP", ioctl(fd, IOMMU_IOAS_UNMAP, &unmap));
	check("IOMMU_DESTROY(hwpt)", destroy(fd, hwpt.out_hwpt_id));
	check("IOMMU_DESTROY(mock device)", destroy(fd, stdev));
	check("IOMMU_DESTROY(ioas)", destroy(fd, ioas));
	check("close /dev/iommu", close(fd));
	munmap(buf, len);
	printf("demo: %s\n", failures ? "FAILED" : "all steps passed");
	return failures ? 1 : 0;
}
