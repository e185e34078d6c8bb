#!/usr/bin/env python3
"""fake_vmrun: a stand-in for VMware's ``vmrun``, because VMware cannot run on the test machine.

The tests put it first on PATH under the name ``vmrun``. It understands just what mln
calls: ``vmrun -T TYPE start VMX [gui|nogui]``, ``vmrun -T TYPE stop VMX [soft|hard]``,
``vmrun -T TYPE suspend VMX [soft|hard]`` and ``vmrun -T TYPE list``, answering like the
real one (``Total running VMs: N`` and one .vmx path per line; ``Error: ...`` and exit
255 on failure).

State lives in the directory named by ``FAKE_VMRUN_DIR``: ``running`` (one .vmx path per
line: the "powered on" VMs), ``suspended`` (the same for suspended VMs, which ``list``
does not show) and ``calls.jsonl`` (every argv, one JSON list per line). Like VMware,
``suspend`` writes the memory file ``<vm>.vmss`` next to the .vmx and sets
``checkpoint.vmState = "<vm>.vmss"`` in the .vmx; ``start`` of a suspended VM resumes it,
empties that setting and (here) deletes the .vmss.
With ``FAKE_VMRUN_NO_TOOLS=1`` a soft stop fails as it does when the guest has no
VMware Tools.
"""
import fcntl
import json
import os
import sys


def main(argv: list[str]) -> int:
    state = os.environ["FAKE_VMRUN_DIR"]
    # The real vmrun serializes on VMware's own inventory; mln starts hosts in parallel,
    # so the fake holds a lock across its read-modify-write of ``running``.
    with open(os.path.join(state, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _main(state, argv)


def _read(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _checkpoint(vmx: str, vmss: str) -> None:
    """Set ``checkpoint.vmState`` in the .vmx, as VMware does on suspend and resume."""
    with open(vmx) as f:
        lines = [line for line in f if not line.startswith("checkpoint.vmState ")]
    lines.append(f'checkpoint.vmState = "{vmss}"\n')
    with open(vmx, "w") as f:
        f.write("".join(lines))


def _main(state: str, argv: list[str]) -> int:
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps(argv) + "\n")
    running_file, suspended_file = os.path.join(state, "running"), os.path.join(state, "suspended")
    running, suspended = _read(running_file), _read(suspended_file)
    args = list(argv)
    if args[:1] == ["-T"]:
        if len(args) < 2 or args[1] not in ("ws", "player", "fusion", "server", "server1", "esx", "vc"):
            print("Error: Unrecognized host type")
            return 255
        args = args[2:]
    if not args:
        print("vmrun: no command")
        return 255
    cmd, rest = args[0], args[1:]
    if cmd == "list":
        print(f"Total running VMs: {len(running)}")
        for vmx in running:
            print(vmx)
        return 0
    if cmd in ("start", "stop", "suspend") and not rest:
        print(f"Error: Invalid arguments to {cmd}")
        return 255
    if cmd == "start":
        vmx = rest[0]
        if not os.path.isfile(vmx):
            print(f"Error: Cannot open VM: {vmx}, The virtual machine cannot be found")
            return 255
        if vmx in running:
            print("Error: The virtual machine is already powered on")
            return 255
        running.append(vmx)
        if vmx in suspended:           # resumed from its .vmss
            suspended.remove(vmx)
            _checkpoint(vmx, "")
            os.unlink(os.path.splitext(vmx)[0] + ".vmss")
    elif cmd == "suspend":
        vmx = rest[0]
        if vmx not in running:
            print("Error: The virtual machine is not powered on: " + vmx)
            return 255
        vmss = os.path.splitext(vmx)[0] + ".vmss"
        with open(vmss, "w") as f:
            f.write("fake suspended state of " + vmx + "\n")
        _checkpoint(vmx, os.path.basename(vmss))
        running.remove(vmx)
        suspended.append(vmx)
    elif cmd == "stop":
        vmx, mode = rest[0], (rest[1] if len(rest) > 1 else "soft")
        if vmx not in running:
            print("Error: The virtual machine is not powered on: " + vmx)
            return 255
        if mode == "soft" and os.environ.get("FAKE_VMRUN_NO_TOOLS") == "1":
            print("Error: The VMware Tools are not running in the virtual machine: " + vmx)
            return 255
        running.remove(vmx)
    else:
        print(f"Error: Unrecognized command: {cmd}")
        return 255
    for path, vms in ((running_file, running), (suspended_file, suspended)):
        with open(path, "w") as f:
            f.write("".join(v + "\n" for v in vms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
