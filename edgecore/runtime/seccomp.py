"""The default seccomp profile (Kubernetes' ``RuntimeDefault`` kind) for the OCI config.

Why a denylist and not Docker's allowlist: an allowlist of ~350 names must track every
new kernel and libc (a container whose libc calls a syscall the list does not know
fails in odd ways: clone3, faccessat2, close_range, ...), and getting it wrong breaks
workloads on one architecture only. What the default must stop is short and stable:
calls that reach kernel state shared with the host (keys, clocks, modules, mounts,
swap, accounting, BPF, perf), that escape or widen isolation (user namespaces,
setns, ptrace, open_by_handle_at) or that are well-known exploit primitives
(userfaultfd, io_uring). Each is refused with EPERM, as Docker's profile does for
calls outside its list; everything else is allowed. The capability set and
no_new_privileges do the rest.

Rules that need more than a name:

- ``unshare`` and ``clone`` are refused only when the flags contain
  ``CLONE_NEWUSER`` (other namespace flags need CAP_SYS_ADMIN, which the default
  capability set does not hold); the flags are argument 0 of both on x86_64 and
  aarch64.
- ``clone3`` passes its flags in memory, which seccomp cannot read: it gets ENOSYS,
  so libc falls back to ``clone`` and the rule above applies (Docker does the same).

Architectures: only the node's native one is listed, so a syscall made through
another ABI (i386 ``int 0x80``, x32, arm32 on arm64) hits libseccomp's default
bad-arch action (kill) instead of slipping past a name-based rule.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

__all__ = ["CLONE_NEWUSER", "DENIED", "default_profile", "seccomp_arch"]

CLONE_NEWUSER = 0x10000000

# Denied on every architecture (names as libseccomp knows them).
_COMMON = (
    # kernel keyrings (not namespaced)
    "add_key", "keyctl", "request_key",
    # mounts and the root (a container never needs them after crun set it up)
    "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_tree", "move_mount", "mount_setattr",
    # namespaces
    "setns",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # kernel modules
    "init_module", "finit_module", "delete_module",
    # clocks (not namespaced)
    "clock_settime", "settimeofday", "adjtimex", "clock_adjtime",
    # the whole machine
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "vhangup", "syslog",
    # tracing, BPF, file handles, exploit primitives
    "bpf", "perf_event_open", "open_by_handle_at", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # NUMA placement of other processes' memory
    "move_pages", "mbind", "set_mempolicy", "migrate_pages",
    "fanotify_init",
)  # fmt: skip

# Only on x86_64 (legacy calls and port I/O).
_X86_64 = (
    "umount", "create_module", "get_kernel_syms", "query_module", "uselib", "ustat",
    "sysfs", "_sysctl", "iopl", "ioperm",
)  # fmt: skip

DENIED: dict[str, tuple[str, ...]] = {
    "x86_64": _COMMON + _X86_64,
    "aarch64": _COMMON,
}

_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def seccomp_arch(machine: str | None = None) -> str:
    """The profile's architecture key for ``machine`` (default: this host's)."""
    m = (machine or os.uname().machine).lower()
    m = {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)
    if m not in _ARCH:
        raise ValueError(f"no default seccomp profile for architecture {m!r} "
                         f"(have {', '.join(sorted(_ARCH))})")
    return m


def default_profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object of the default profile for ``machine``."""
    arch = seccomp_arch(machine)
    eperm = errno.EPERM
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [_ARCH[arch]],
        "syscalls": [
            {"names": sorted(DENIED[arch]), "action": "SCMP_ACT_ERRNO", "errnoRet": eperm},
            {"names": ["unshare", "clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": eperm,
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        ],
    }


_OCI_KEYS = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
             "listenerMetadata", "syscalls")
_RULE_KEYS = ("names", "action", "errnoRet", "args")


def localhost(text: str) -> str:
    """A node's seccomp profile file (Kubernetes' ``Localhost`` kind) as the OCI
    ``linux.seccomp`` document, JSON text. Accepts the OCI form and Docker's (its
    ``archMap`` becomes ``architectures``; ``comment``, ``includes``, ``excludes`` and
    other Docker-only keys are dropped, as containerd does). Raises ValueError saying
    what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("defaultAction"), str):
        raise ValueError("a seccomp profile is a JSON object with a defaultAction")
    out = {k: doc[k] for k in _OCI_KEYS if k in doc}
    if "architectures" not in out and isinstance(doc.get("archMap"), list):
        arches: list[Any] = []
        for entry in doc["archMap"]:
            if isinstance(entry, dict):
                arches += [entry.get("architecture"), *(entry.get("subArchitectures") or [])]
        out["architectures"] = [a for a in arches if isinstance(a, str)]
    rules = out.get("syscalls", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ValueError("syscalls must be a list of rules")
    out["syscalls"] = [{k: r[k] for k in _RULE_KEYS if k in r} for r in rules
                       if r.get("names") and isinstance(r.get("action"), str)]
    if not out["syscalls"]:
        del out["syscalls"]
    return json.dumps(out, separators=(",", ":"), sort_keys=True)
