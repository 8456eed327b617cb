"""Run a systemd unit's ExecStart under an approximation of its [Service] sandbox, where `systemd-run
--property=...` cannot run (PID 1 here is not systemd): bubblewrap (`bwrap`) for the namespaces and mounts, and a
seccomp filter built with libseccomp (through ctypes) for the system-call rules, exported as BPF to `bwrap
--seccomp`. Used by tests/test_units.py.

Reproduced, as systemd 252 implements each (src/shared/seccomp-util.c, src/core/namespace.c):
    User= / PrivateUsers=       a user namespace in which the service runs as uid/gid 65534 (nobody); outside,
                                it is the caller (the test tree may live where only its owner can read)
    CapabilityBoundingSet=      every capability dropped (bwrap --cap-drop ALL); NoNewPrivileges: bwrap sets it
    ProtectSystem=strict        / read-only; ReadWritePaths= bound writable (a test folder may stand in for
                                one); ReadOnlyPaths= stay read-only
    ProtectHome=yes             empty /home, /root, /run/user (then the venv and the checkout bound back, read-only)
    PrivateTmp=                 its own /tmp and /var/tmp
    StateDirectory=             a writable /var/lib/<name> (a test folder, over an empty /var/lib)
    PrivateDevices=yes          a /dev of pseudo devices (bwrap --dev); `no` (the GPU drop-in): the host's /dev
    ProtectProc=invisible       its own PID namespace: no other process is visible
    ProcSubset=pid              /proc entries that are not a process (cpuinfo, meminfo, sys, ...) emptied
    ProtectHostname, PrivateIPC UTS and IPC namespaces
    LoadCredential= / SetCredential=  the file (or the value) copied to a private folder, $CREDENTIALS_DIRECTORY
                                (under /opt: the host's /run is read-only in here)
    Environment=, WorkingDirectory=, UMask=
    SystemCallFilter= (allow list, then ~deny lists), SystemCallErrorNumber=, SystemCallArchitectures=native,
    MemoryDenyWriteExecute= (no mmap W+X, no mprotect/pkey_mprotect to X, no shmat SHM_EXEC),
    RestrictAddressFamilies= (socket() of other families), RestrictNamespaces=yes (clone with CLONE_NEW*, unshare,
    setns; clone3 answers ENOSYS so glibc falls back to clone, as systemd does), LockPersonality=,
    RestrictSUIDSGID= (chmod with setuid/setgid bits), RestrictRealtime= (sched_setscheduler: in @resources)

Not reproduced (say so, never pretend): DevicePolicy= / DeviceAllow= (the device cgroup: needs systemd),
IPAddressAllow/Deny= (cgroup BPF), ProtectControlGroups= beyond a read-only /sys, ProtectKernelLogs= beyond the
hidden /proc/kmsg and a /dev without /dev/kmsg, ProtectClock= beyond the filter (@clock is in @privileged),
KeyringMode=, RemoveIPC=, Type=notify and WatchdogSec= (no NOTIFY_SOCKET: the worker's notifier is then a no-op),
Restart=, the service user's real uid, and the exact errno RestrictAddressFamilies= returns (EAFNOSUPPORT: here
the filter's SystemCallErrorNumber).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

AF = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
ERRNO = {"EPERM": 1, "EACCES": 13, "ENOSYS": 38, "EAFNOSUPPORT": 97}
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
S_ISUID, S_ISGID = 0o4000, 0o2000
CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7


def available() -> str | None:
    """None when the sandbox can run here, else why not (the test's skip reason)."""
    for tool in ("bwrap", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: bubblewrap, systemd)"
    if ctypes.util.find_library("seccomp") is None:
        return "libseccomp is not installed (Debian: libseccomp2)"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-user", "--unshare-pid", "--", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bwrap cannot make namespaces here: {probe.stderr.strip()[:200]}"
    return None


# -- the unit file -------------------------------------------------------------------------------------------

def service_directives(*paths: Path) -> dict[str, list[str]]:
    """[Service] of a unit and its drop-ins, in order: directive -> every value (an empty value resets the list,
    as systemd reads it)."""
    out: dict[str, list[str]] = {}
    for path in paths:
        section = None
        text = re.sub(r"\\\n", " ", path.read_text())
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, value = (p.strip() for p in line.split("=", 1))
            if value == "" and key not in ("CapabilityBoundingSet", "AmbientCapabilities"):
                out[key] = []
            else:
                out.setdefault(key, []).append(value)
    return out


def last(d: dict[str, list[str]], key: str, default: str = "") -> str:
    return d[key][-1] if d.get(key) else default


def yes(d: dict[str, list[str]], key: str) -> bool:
    return last(d, key).lower() in ("yes", "true", "1", "on", "strict", "full", "invisible", "pid")


# -- seccomp -------------------------------------------------------------------------------------------------

@functools.cache
def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups (`systemd-analyze syscall-filter`): @name -> members (names or @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str]) -> set[str]:
    groups, out, todo = syscall_groups(), set(), list(names)
    while todo:
        name = todo.pop()
        if name.startswith("@"):
            todo += groups[name]
        else:
            out.add(name)
    return out


def allowed_syscalls(d: dict[str, list[str]]) -> set[str] | None:
    """SystemCallFilter= as systemd combines it: the first allow list, minus every later `~` list; None: none."""
    allowed: set[str] | None = None
    for value in d.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split())
        if deny:
            if allowed is not None:
                allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    return allowed


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def seccomp_filter(d: dict[str, list[str]], out: Path) -> bool:
    """Write the unit's system-call rules as BPF to `out`; False when the unit has none."""
    allowed = allowed_syscalls(d)
    if allowed is None:
        return False
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_Arg)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    errno = ERRNO[last(d, "SystemCallErrorNumber", "EPERM")]
    ctx = lib.seccomp_init(0x00050000 | errno)  # SCMP_ACT_ERRNO: what systemd returns for a filtered call

    def rule(name: str, *conds: tuple[int, int, int, int], action: int = SCMP_ACT_ALLOW) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a syscall of this architecture (e.g. the *32 names)
        arr = (_Arg * max(len(conds), 1))(*(_Arg(*c) for c in conds))
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name} {conds}")

    conditional: dict[str, list[tuple[tuple[int, int, int, int], ...]]] = {}
    if yes(d, "MemoryDenyWriteExecute"):
        wx = PROT_WRITE | PROT_EXEC
        conditional["mmap"] = [((2, SCMP_CMP_MASKED_EQ, wx, v),) for v in (0, PROT_WRITE, PROT_EXEC)]
        conditional["mprotect"] = [((2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),)]
        conditional["pkey_mprotect"] = [((2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0),)]
        conditional["shmat"] = [((2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0),)]
    families = last(d, "RestrictAddressFamilies")
    if families:
        conditional["socket"] = [((0, SCMP_CMP_EQ, AF[f], 0),) for f in families.split()]
    if yes(d, "RestrictNamespaces"):
        conditional["clone"] = [((0, SCMP_CMP_MASKED_EQ, CLONE_NEW, 0),)]
        conditional["unshare"] = []
        conditional["setns"] = []
        conditional["clone3"] = []
        rule("clone3", action=0x00050000 | ERRNO["ENOSYS"])
    if yes(d, "LockPersonality"):
        conditional["personality"] = [((0, SCMP_CMP_EQ, 0, 0),), ((0, SCMP_CMP_EQ, 0xFFFFFFFF, 0),)]
    if yes(d, "RestrictSUIDSGID"):
        suid = S_ISUID | S_ISGID
        conditional["chmod"] = [((1, SCMP_CMP_MASKED_EQ, suid, 0),)]
        conditional["fchmod"] = [((1, SCMP_CMP_MASKED_EQ, suid, 0),)]
        conditional["fchmodat"] = [((2, SCMP_CMP_MASKED_EQ, suid, 0),)]
    for name in sorted(allowed - set(conditional)):
        rule(name)
    for name, alternatives in conditional.items():
        if name in allowed or name == "clone3":
            for conds in alternatives:
                rule(name, *conds)
    with out.open("wb") as f:
        rc = lib.seccomp_export_bpf(ctx, f.fileno())
    lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_export_bpf")
    return True


# -- the command ---------------------------------------------------------------------------------------------

@dataclass
class Sandbox:
    """bwrap + seccomp for one unit's [Service]; `command(argv)` and `env()` for subprocess.run(..., umask=...)."""

    directives: dict[str, list[str]]
    unit_name: str
    read_only: list[str] = field(default_factory=list)  # host paths bound back read-only (venv, checkout, engine)
    binds: dict[str, str] = field(default_factory=dict)  # host path -> path inside (read-only), e.g. the checkout
    writable: dict[str, str] = field(default_factory=dict)  # a ReadWritePaths= path -> the host folder standing in
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="unit-sandbox-")))

    def credentials(self) -> Path | None:
        """LoadCredential= files (SetCredential= values where the file is absent), mode 0400, in a folder."""
        folder = self.work / "credentials"
        creds: dict[str, str] = {}
        for value in self.directives.get("SetCredential", []):
            name, _, data = value.partition(":")
            creds[name] = data
        for value in self.directives.get("LoadCredential", []):
            name, _, path = value.partition(":")
            if Path(path).exists():
                creds[name] = Path(path).read_text()
        if not creds:
            return None
        folder.mkdir(exist_ok=True)
        for name, data in creds.items():
            (folder / name).write_text(data)
            (folder / name).chmod(0o400)
        return folder

    def command(self, argv: list[str], load_credentials: dict[str, Path] | None = None,
                seccomp_fd: int | None = None) -> list[str]:
        """bwrap arguments that run `argv` inside the sandbox (the BPF filter, written by `filter()`, read from
        `seccomp_fd`). `load_credentials` replaces LoadCredential='s source files (the test's, instead of
        /etc/steel-inspector/...)."""
        d = self.directives
        if load_credentials:
            d = {**d, "LoadCredential": [f"{k}:{v}" for k, v in load_credentials.items()]}
            self.directives = d
        cmd = ["bwrap", "--die-with-parent", "--new-session", "--ro-bind", "/", "/"]
        if last(d, "ProtectSystem") != "strict":
            raise ValueError("the sandbox reproduces ProtectSystem=strict only")
        cmd += ["--dev", "/dev"] if yes(d, "PrivateDevices") else ["--dev-bind", "/dev", "/dev"]
        cmd += ["--proc", "/proc", "--unshare-pid"]
        if last(d, "ProcSubset") == "pid":
            for entry in sorted(os.listdir("/proc")):
                if entry.isdigit() or entry in ("self", "thread-self"):
                    continue
                path = f"/proc/{entry}"
                if os.path.islink(path):
                    continue
                cmd += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
        if yes(d, "ProtectHome"):
            cmd += [arg for p in ("/home", "/root", "/run/user") if os.path.isdir(p) for arg in ("--tmpfs", p)]
        if yes(d, "PrivateTmp"):
            cmd += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        cmd += ["--tmpfs", "/opt"]  # where the unit's paths are bound (the checkout, an engine)
        for path in self.read_only:
            cmd += ["--ro-bind", path, path]
        for host, inside in self.binds.items():
            cmd += ["--ro-bind", host, inside]
        for value in d.get("ReadWritePaths", []):
            for path in (p.lstrip("-") for p in value.split()):
                host = self.writable.get(path, path)
                if os.path.exists(host):
                    cmd += ["--bind", host, path]
        states = [n for value in d.get("StateDirectory", []) for n in value.split()]
        if states:  # systemd makes /var/lib/<name> writable for the service; here: over a tmpfs /var/lib
            cmd += ["--tmpfs", "/var/lib"]
            for name in states:
                host = self.work / "state" / name
                host.mkdir(parents=True, exist_ok=True)
                cmd += ["--bind", str(host), f"/var/lib/{name}"]
        creds = self.credentials()
        if creds is not None:
            inside = f"/opt/.credentials/{self.unit_name}"  # systemd's is /run/credentials/<unit>: read-only here
            cmd += ["--ro-bind", str(creds), inside, "--setenv", "CREDENTIALS_DIRECTORY", inside]
        cmd += ["--remount-ro", "/opt"]
        if d.get("User") or yes(d, "PrivateUsers"):
            cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
        if yes(d, "ProtectHostname"):
            cmd += ["--unshare-uts"]
        if yes(d, "PrivateIPC"):
            cmd += ["--unshare-ipc"]
        if d.get("CapabilityBoundingSet") == [""]:
            cmd += ["--cap-drop", "ALL"]
        for value in d.get("Environment", []):
            for assignment in value.split():
                key, _, val = assignment.partition("=")
                cmd += ["--setenv", key, val]
        if d.get("WorkingDirectory"):
            cmd += ["--chdir", last(d, "WorkingDirectory")]
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        return [*cmd, "--", *argv]

    def run(self, argv: list[str], env: dict[str, str], timeout: float,
            load_credentials: dict[str, Path] | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the sandbox, with the unit's system-call filter and UMask=."""
        bpf = self.work / "filter.bpf"
        fd = os.open(bpf, os.O_RDONLY) if seccomp_filter(self.directives, bpf) else None
        try:
            cmd = self.command(argv, load_credentials, fd)
            umask = int(last(self.directives, "UMask", "0022"), 8)
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, umask=umask,
                                  pass_fds=(fd,) if fd is not None else ())
        finally:
            if fd is not None:
                os.close(fd)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
