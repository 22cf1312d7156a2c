/*
 * iommufd-emu demo: an ordinary C program using /dev/iommu. Run it with
 *   npm start                      (builds it and runs it through `iommufd-emu run --trace`)
 * It is built against headers generated from the emulator's uAPI table
 * (`iommufd-emu headers DIR`): linux/iommufd.h and iommufd_test.h.
 *
 * Steps: open /dev/iommu, allocate an IOAS, map a buffer, create a mock
 * device with its own domain (IOMMU_TEST_CMD / MOCK_DOMAIN), allocate a
 * nesting-parent HWPT for it; then (ABIs with vIOMMU) a vIOMMU over that
 * parent, a vDEVICE, a nested HWPT the device is attached to, a vEVENTQ that
 * receives an event, a vIOMMU cache invalidation; a fault queue; then tear
 * everything down.
 */
#include <poll.h>
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

#ifdef IOMMU_VIOMMU_ALLOC
	/* the vIOMMU: a virtual IOMMU instance over the nesting parent */
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST,
					 .dev_id = idev, .hwpt_id = hwpt.out_hwpt_id };
	if (check("IOMMU_VIOMMU_ALLOC", ioctl(fd, IOMMU_VIOMMU_ALLOC, &va)) == 0) {
		struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = va.out_viommu_id,
						  .dev_id = idev, .virt_id = 0x42 };
		check("IOMMU_VDEVICE_ALLOC(virt_id 0x42)", ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd));

		/* a stage-1 (nested) HWPT owned by the vIOMMU; attach the device to it */
		struct iommu_hwpt_selftest s1 = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
		struct iommu_hwpt_alloc nest = { .size = sizeof(nest), .dev_id = idev, .pt_id = va.out_viommu_id,
						 .data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(s1),
						 .data_uptr = (__u64)(unsigned long)&s1 };
		check("IOMMU_HWPT_ALLOC(nested)", ioctl(fd, IOMMU_HWPT_ALLOC, &nest));
		struct iommu_test_cmd rep = { .size = sizeof(rep), .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev };
		rep.mock_domain_replace.pt_id = nest.out_hwpt_id;
		check("attach device to nested HWPT", ioctl(fd, IOMMU_TEST_CMD, &rep));

		/* events the vIOMMU reports for the device arrive on the vEVENTQ fd */
		struct iommu_veventq_alloc vq = { .size = sizeof(vq), .viommu_id = va.out_viommu_id,
						  .type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 8 };
		if (check("IOMMU_VEVENTQ_ALLOC", ioctl(fd, IOMMU_VEVENTQ_ALLOC, &vq)) == 0) {
			struct iommu_test_cmd trig = { .size = sizeof(trig), .op = IOMMU_TEST_OP_TRIGGER_VEVENT };
			trig.trigger_vevent.dev_id = idev;
			check("IOMMU_TEST_CMD(TRIGGER_VEVENT)", ioctl(fd, IOMMU_TEST_CMD, &trig));
			struct pollfd p = { .fd = (int)vq.out_veventq_fd, .events = POLLIN };
			int ready = poll(&p, 1, 1000);
			struct { struct iommufd_vevent_header h; struct iommu_viommu_event_selftest e; } ev;
			ssize_t n = read((int)vq.out_veventq_fd, &ev, sizeof(ev));
			printf("demo: poll(vEVENTQ fd %u) = %d; read = %zd: seq %u, virt_id 0x%x\n",
			       vq.out_veventq_fd, ready, n, ev.h.sequence, ev.e.virt_id);
			check("close(vEVENTQ fd)", close((int)vq.out_veventq_fd));
			check("IOMMU_DESTROY(vEVENTQ)", destroy(fd, vq.out_veventq_id));
		}

		/* invalidate one device cache entry through the vIOMMU */
		struct iommu_viommu_invalidate_selftest inv = { .vdev_id = 0x42, .cache_id = 1 };
		struct iommu_hwpt_invalidate hi = { .size = sizeof(hi), .hwpt_id = va.out_viommu_id,
						    .data_uptr = (__u64)(unsigned long)&inv,
						    .data_type = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST,
						    .entry_len = sizeof(inv), .entry_num = 1 };
		check("IOMMU_HWPT_INVALIDATE(vIOMMU)", ioctl(fd, IOMMU_HWPT_INVALIDATE, &hi));

		rep.mock_domain_replace.pt_id = hwpt.out_hwpt_id;
		check("attach device back to parent", ioctl(fd, IOMMU_TEST_CMD, &rep));
		check("IOMMU_DESTROY(nested HWPT)", destroy(fd, nest.out_hwpt_id));
		check("IOMMU_DESTROY(vDEVICE)", destroy(fd, vd.out_vdevice_id));
		check("IOMMU_DESTROY(vIOMMU)", destroy(fd, va.out_viommu_id));
	}
#endif

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
	/* the device goes first: an attached HWPT is busy */
	check("IOMMU_DESTROY(mock device)", destroy(fd, stdev));
	check("IOMMU_DESTROY(hwpt)", destroy(fd, hwpt.out_hwpt_id));
	check("IOMMU_DESTROY(ioas)", destroy(fd, ioas));
	check("close /dev/iommu", close(fd));
	munmap(buf, len);
	printf("demo: %s\n", failures ? "FAILED" : "all steps passed");
	return failures ? 1 : 0;
}
