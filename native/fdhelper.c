/*
 * iommufd-emu fd helper: holds the server's references to files of client
 * processes that Node cannot hold itself -- eventfds passed by number inside
 * VFIO_DEVICE_SET_IRQS (and the like). The kernel's eventfd_ctx_fdget takes a
 * reference on the file, which outlives the caller closing its fd; here
 * pidfd_getfd(2) copies the client's file into this process (the same ptrace
 * access the server already needs for /proc/<pid>/mem), and the server signals
 * it by asking us to write 1 to it.
 *
 * Protocol (src/server/fdhelper.ts): fixed 16-byte requests on the request
 * FIFO, 8-byte replies on the reply FIFO, strictly one at a time:
 *   { u32 op, u32 pid, s32 fd, u32 id } -> { s32 result, u32 pad }
 *   op 1 GET: copy pid's fd; result = an id (> 0) or -errno (EBADF: not open, EINVAL: not an eventfd)
 *   op 2 SIGNAL: eventfd_signal(id, 1); op 3 PUT: drop the reference.
 * EOF on the request FIFO (the server is gone) ends the helper.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

struct req { uint32_t op, pid; int32_t fd; uint32_t id; };
struct rep { int32_t result; uint32_t pad; };

static int read_full(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Is our fd an eventfd (its /proc link names the anonymous inode "[eventfd]")? */
static int is_eventfd(int fd)
{
	char p[64], l[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, l, sizeof(l) - 1);
	if (n <= 0)
		return 0;
	l[n] = 0;
	return strcmp(l, "anon_inode:[eventfd]") == 0;
}

static int32_t get_fd(uint32_t pid, int32_t fd)
{
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0)
		return -ESRCH;
	int f = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
	int e = errno;
	close(pidfd);
	if (f < 0)
		return e == EBADF ? -EBADF : -e;
	if (!is_eventfd(f)) {
		close(f);
		return -EINVAL;
	}
	return f; /* the id is our fd number */
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s REQUEST_FIFO REPLY_FIFO\n", argv[0]);
		return 2;
	}
	int in = open(argv[1], O_RDONLY | O_CLOEXEC);
	int out = open(argv[2], O_WRONLY | O_CLOEXEC);
	if (in < 0 || out < 0) {
		perror("fdhelper: open");
		return 1;
	}
	struct req q;
	while (read_full(in, &q, sizeof(q)) == 0) {
		struct rep r = { 0, 0 };
		uint64_t one = 1;
		switch (q.op) {
		case 1:
			r.result = get_fd(q.pid, q.fd);
			break;
		case 2:
			r.result = write((int)q.id, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
			break;
		case 3:
			r.result = close((int)q.id) == 0 ? 0 : -errno;
			break;
		default:
			r.result = -EINVAL;
		}
		if (write(out, &r, sizeof(r)) != sizeof(r))
			return 1;
	}
	return 0;
}
