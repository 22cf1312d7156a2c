/* failnth_launch: the oracle VM's init runs its program without an environment of ours;
 * this dynamic launcher preloads /prog/failnth_count.so into ./iommufd_fail_nth (both passed
 * as run.sh FILES). gcc -O2 -o failnth_launch failnth_launch.c */
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	(void)argc;
	setenv("LD_PRELOAD", "/prog/failnth_count.so", 1);
	argv[0] = "./iommufd_fail_nth";
	execv(argv[0], argv);
	return 127;
}
