"""mln's backend conformance suite run against "my" backend: a few lines.

The backend here is the built-in ``uml``, standing in for a third party's plugin: give
the name of yours (its ``hypervisor`` keyword) and what is true of it.
"""
from mln_core.testing import Backend, conformance_tests


def setup(env, request):
    """Once per scenario, in its fresh environment: register the template the hosts use."""
    t = request.getfixturevalue("busybox_template")
    env.register_template(t / "busybox.ext4", kernel=t / "vmlinux", initrd=t / "initrd.gz")


MY_BACKEND = Backend(
    "uml",                          # the hypervisor keyword of the backend under test
    template="busybox.ext4",        # the template the scenarios' hosts use
    can_save=False,                 # `mln stop -S` shuts it down instead of saving
    boot_log=r"Please press Enter to activate this console",   # it has booted
    setup=setup,
)

TestMyBackend = conformance_tests(MY_BACKEND)
