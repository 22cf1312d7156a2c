/* dropcap CAP -- PROG ARGS...: run PROG without capability number CAP (effective,
 * permitted, inheritable and bounding sets). Used to record, on the oracle kernel,
 * the verdicts of an environment that lacks a capability (a container without
 * CAP_SYS_RESOURCE, for instance). Static build: gcc -static -O2 -o dropcap dropcap.c */
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--") != 0) {
		fprintf(stderr, "usage: %s CAP -- PROG ARGS...\n", argv[0]);
		return 2;
	}
	int cap = atoi(argv[1]);
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &h, d) != 0) { perror("capget"); return 1; }
	if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) { perror("PR_CAPBSET_DROP"); return 1; }
	unsigned mask = ~(1u << (cap % 32));
	d[cap / 32].effective &= mask;
	d[cap / 32].permitted &= mask;
	d[cap / 32].inheritable &= mask;
	if (syscall(SYS_capset, &h, d) != 0) { perror("capset"); return 1; }
	execv(argv[3], argv + 3);
	perror("execv");
	return 127;
}
