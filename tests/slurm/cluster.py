#!/usr/bin/env python3
"""Throw-away single-node SLURM cluster on localhost, for tests.

Everything lives in one scratch directory: slurm.conf, gres.conf, a private
munge key/socket, state + spool dirs, PID files and logs.  The daemons
(munged, slurmctld, slurmd) run in the foreground as children of this
process, so they are tracked and stopped strictly BY PID (never by name).

Usage as a library (what tests/test_slurm.py does)::

    from cluster import LocalSlurm
    with LocalSlurm(scratch_dir) as c:      # writes config, starts, waits idle
        env = c.env()                        # os.environ + SLURM_CONF=...
        ...                                  # sbatch / snakemake --profile ...
    # here every daemon started is gone (asserted by c.leftover_pids())

Usage from a shell (debugging)::

    python tests/slurm/cluster.py up /tmp/slurmtest &   # runs until SIGTERM/^C
    export PATH=/tmp/slurmtest/bin:$PATH SLURM_CONF=/tmp/slurmtest/etc/slurm.conf
    sinfo; sbatch --gpus=1 --wrap hostname; ...
    python tests/slurm/cluster.py down /tmp/slurmtest   # stops it, by PID files

Requirements: root (slurmd must run as root), Debian/Ubuntu packages
``slurm-wlm munge`` (or slurmctld + slurmd + slurm-client + munge); see
``python tests/slurm/cluster.py install`` / ``install_command()``.
Only the machine's real CPU/memory layout (``slurmd -C``) is used; the node
advertises fake ``gpu`` GRES backed by /dev/null, /dev/zero, ... so that ``--gpus=N``
requests are schedulable without a GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

APT_PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "srun")
# client commands that get a SLURM_CONF-setting wrapper in <scratch>/bin
WRAPPED = CLIENTS + ("scancel", "sacct", "sacctmgr", "sshare", "salloc", "sstat")
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# device files standing in for fake GPUs (distinct character devices present on every Linux)
FAKE_GPU_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")


class SlurmUnavailable(RuntimeError):
    """SLURM/munge binaries missing or this process cannot run them (not root)."""


def install_command() -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]


def which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def find_binaries() -> dict[str, str]:
    """Absolute paths of every needed binary; raises SlurmUnavailable otherwise."""
    found = {n: which(n) for n in DAEMONS + CLIENTS}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise SlurmUnavailable(
            f"SLURM binaries not found: {', '.join(missing)} "
            f"(install with: sudo {' '.join(install_command())})"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local SLURM test cluster needs root (slurmd runs as root)")
    return found  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")  # zombies are dead, just not reaped
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, sid) for every live process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):
                continue
            table[int(d)] = (int(fields[1]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue
    return table


MARKER = "LOCAL_SLURM_TEST_CLUSTER"  # env var carried by everything a cluster starts


def _has_marker(pid: int, value: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER}={value}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def cluster_processes(roots: set[int], marker_value: str | None = None) -> set[int]:
    """Live processes started by a test cluster: the daemons (`roots`), their
    descendants/session members, and -- because slurmstepd daemonizes away
    from slurmd (parent 1, own session) -- every process whose environment
    carries MARKER=<marker_value> (slurmd passes its environment on to
    slurmstepd; jobs get it from sbatch --export=ALL), plus their descendants.
    The calling process and its ancestors are never included."""
    table = _proc_table()
    seeds = {p for p in roots if p in table}
    if marker_value:
        seeds |= {p for p in table if _has_marker(p, marker_value)}
    me, protect = os.getpid(), set()
    while me in table and me not in protect:
        protect.add(me)
        me = table[me][0]
    return descendants(seeds, table) - protect


def descendants(roots: set[int], table: dict | None = None) -> set[int]:
    """Live processes among `roots`, descending from them, or in a session led by one."""
    table = _proc_table() if table is None else table
    out = {p for p in roots if p in table}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, sid) in table.items():
            if pid not in out and (ppid in out or sid in roots):
                out.add(pid)
                changed = True
    return out


def node_hardware(slurmd: str) -> dict[str, str]:
    """Parse `slurmd -C` (the machine's real layout) into key/value pairs."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("NodeName="))
    kv = dict(tok.split("=", 1) for tok in line.split())
    # slurmd -C reports all installed memory; leave a little headroom
    # so that slurmd's own check (configured <= real) never drains the node.
    kv["RealMemory"] = str(max(256, int(kv["RealMemory"]) - 256))
    return {k: v for k, v in kv.items() if k not in ("NodeName", "UpTime")}


class LocalSlurm:
    def __init__(self, scratch: str | os.PathLike, gpus: int = 1, start_timeout: float = 90):
        self.root = Path(scratch).resolve()
        self.gpus = gpus
        self.start_timeout = start_timeout
        self.bin = find_binaries()
        self.host = socket.gethostname().split(".")[0]
        self.etc = self.root / "etc"
        self.run = self.root / "run"
        self.log = self.root / "log"
        self.bindir = self.root / "bin"
        self.conf = self.etc / "slurm.conf"
        self.munge_socket = self.run / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids_file = self.run / "daemons.json"
        self.partition = "debug"

    # -- configuration -----------------------------------------------------
    def write_config(self) -> None:
        for d in (self.etc, self.run, self.log, self.root / "state", self.root / "spool", self.root / "munge"):
            d.mkdir(parents=True, exist_ok=True)
        # munged refuses world-writable dirs on the socket/key path
        for d in (self.root, self.etc, self.run, self.log, self.root / "munge"):
            os.chmod(d, 0o755)
        key = self.etc / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        hw = node_hardware(self.bin["slurmd"])
        node_hw = " ".join(f"{k}={v}" for k, v in hw.items())
        self.cpus = int(hw.get("CPUs", "1"))
        self.real_memory = int(hw["RealMemory"])
        r = self.root
        conf = f"""# generated by tests/slurm/cluster.py -- single-node test cluster
ClusterName=snakemake-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.run}/slurmctld.pid
SlurmdPidFile={self.run}/slurmd.pid
SlurmctldLogFile={self.log}/slurmctld.log
SlurmdLogFile={self.log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
GresTypes=gpu
# no slurmdbd: no accounting storage, no accounting gathering
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol for 10 min; the snakemake
# slurm plugin only trusts `squeue` if MinJobAge >= 3 x its first-check delay
MinJobAge=600
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={self.host} NodeAddr=127.0.0.1 {node_hw} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        self.write_wrappers()
        # fake GPUs: a schedulable `gpu` GRES; character devices that every Linux has stand in for
        # the GPUs' device files (one distinct file per GPU: slurmd counts the files)
        if self.gpus > len(FAKE_GPU_DEVICES):
            raise SlurmUnavailable(f"at most {len(FAKE_GPU_DEVICES)} fake GPUs (one device file each)")
        gres = "".join(f"NodeName={self.host} Name=gpu File={device}\n" for device in FAKE_GPU_DEVICES[:self.gpus])
        (self.etc / "gres.conf").write_text(gres)

    def write_wrappers(self) -> None:
        """<scratch>/bin/{srun,sbatch,...}: exec the real client with our SLURM_CONF.

        A real cluster keeps slurm.conf where clients find it by default
        (/etc/slurm, or configless via slurmd).  Ours lives in the scratch dir,
        and SLURM_CONF alone is not enough: inside a job the slurm-jobstep
        plugin strips every SLURM_* variable (SLURM_CONF included) before its
        nested `srun`, which then fails with "Could not establish a
        configuration source".  These wrappers, first on PATH, emulate the
        default location without touching /etc.
        """
        self.bindir.mkdir(parents=True, exist_ok=True)
        for name in WRAPPED:
            real = which(name)
            if real is None:
                continue
            w = self.bindir / name
            w.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}"; export SLURM_CONF\nexec "{real}" "$@"\n')
            os.chmod(w, 0o755)

    def env(self, base: dict | None = None) -> dict[str, str]:
        """Environment for talking to this cluster: wrappers first on PATH + SLURM_CONF."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env[MARKER] = str(self.root)
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != str(self.bindir)]
        path += [d for d in SBIN_DIRS if d not in path]
        env["PATH"] = os.pathsep.join([str(self.bindir)] + path)
        return env

    # -- daemons -----------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.log / f"{name}.stdout", "ab")
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env(), start_new_session=True, cwd=self.root,
        )
        out.close()
        self.procs[name] = p
        self._save_pids()

    def _save_pids(self) -> None:
        self.pids_file.write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))

    def _run(self, argv, timeout=20, check=False):
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env(), check=check)

    def _wait(self, what: str, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{n} exited with {p.returncode} while waiting for {what}\n{self.logs()}")
            try:
                if cond():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def start(self) -> "LocalSlurm":
        self.write_config()
        try:
            self._spawn("munged", [
                self.bin["munged"], "--foreground", "--force",
                f"--socket={self.munge_socket}", f"--key-file={self.etc / 'munge.key'}",
                f"--pid-file={self.run / 'munged.pid'}", f"--log-file={self.log / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ])
            self._wait("munge socket", self.munge_socket.exists, 20)
            # -D: foreground (we own the PID), -i: ignore stale state, -f: our conf
            self._spawn("slurmctld", [self.bin["slurmctld"], "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self._run([self.bin["scontrol"], "ping"], 10).stdout.count("UP") > 0, 45)
            self._spawn("slurmd", [self.bin["slurmd"], "-D", "-f", str(self.conf)])
            self._wait(
                f"node {self.host} idle",
                lambda: self._run([self.bin["sinfo"], "-h", "-N", "-n", self.host, "-o", "%t"], 10).stdout.strip() == "idle",
                self.start_timeout,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def logs(self, tail: int = 30) -> str:
        parts = []
        for f in sorted(self.log.glob("*")):
            try:
                lines = f.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                continue
            parts.append(f"==> {f} <==\n" + "\n".join(lines))
        return "\n".join(parts)

    def daemon_pids(self) -> set[int]:
        return {p.pid for p in self.procs.values()}

    def leftover_pids(self) -> set[int]:
        """Every process this cluster started (daemons, slurmstepd, job steps) still alive."""
        return cluster_processes(self.daemon_pids(), str(self.root))

    def cancel_all_jobs(self, timeout: float = 20) -> None:
        """scancel whatever is still queued/running, wait until slurmd's steps are gone."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        try:
            ids = self._run([self.bin["squeue"], "-h", "-o", "%i", "-t", "PD,R,CG,S,CF"], 10).stdout.split()
            if not ids:
                return
            self._run([which("scancel") or "scancel", *ids], 10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self._run([self.bin["squeue"], "-h", "-o", "%i", "-t", "PD,R,CG,S,CF"], 10).stdout.split():
                    return
                time.sleep(0.5)
        except (subprocess.TimeoutExpired, OSError):
            pass

    def stop(self, timeout: float = 30) -> None:
        """Cancel jobs, SIGTERM each daemon by PID (slurmd, slurmctld, munged),
        then TERM/KILL by PID whatever else the cluster started (slurmstepd, job
        processes; found by MARKER, see cluster_processes)."""
        roots = self.daemon_pids()
        self.cancel_all_jobs()
        started = cluster_processes(roots, str(self.root))
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None:
                self._terminate(p.pid, p, timeout)
        _kill_all(started | cluster_processes(roots, str(self.root)))

    @staticmethod
    def _terminate(pid: int, popen: subprocess.Popen | None, timeout: float) -> None:
        if not pid_alive(pid):
            if popen is not None:
                popen.poll()
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                return
            if popen is None and not pid_alive(pid):
                return
            time.sleep(0.2)
        _signal(pid, signal.SIGKILL)
        if popen is not None:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_all(pids: set[int], grace: float = 10) -> None:
    rest = {p for p in pids if pid_alive(p)}
    for p in rest:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while rest and time.monotonic() < deadline:
        time.sleep(0.2)
        rest = {p for p in rest if pid_alive(p)}
    for p in rest:
        _signal(p, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("up", "down", "install", "check"):
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "install":
        subprocess.run(["apt-get", "update"], check=True, timeout=600)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        return subprocess.run(install_command(), env=env, timeout=900).returncode
    if cmd == "check":
        try:
            print(json.dumps(find_binaries(), indent=1))
            return 0
        except SlurmUnavailable as e:
            print(e, file=sys.stderr)
            return 1
    scratch = Path(argv[2] if len(argv) > 2 else "/tmp/slurm-test-cluster")
    if cmd == "up":
        # Stays in the foreground as the daemons' parent (so they get reaped)
        # until SIGINT/SIGTERM, then stops them by PID.  Background it with `&`
        # and end it with `python cluster.py down DIR` (or kill <its pid>).
        c = LocalSlurm(scratch)
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(1))
        c.start()
        (c.run / "supervisor.pid").write_text(str(os.getpid()))
        print(f"cluster up (pid {os.getpid()}); export PATH={c.bindir}:$PATH SLURM_CONF={c.conf}", flush=True)
        try:
            while not stop and all(p.poll() is None for p in c.procs.values()):
                time.sleep(0.5)
        finally:
            c.stop()
            (c.run / "supervisor.pid").unlink(missing_ok=True)
            left = c.leftover_pids()
            print("stopped" if not left else f"LEFTOVER PIDS: {sorted(left)}", flush=True)
        return 0 if not left else 1
    # down
    run = scratch.resolve() / "run"
    sup = run / "supervisor.pid"
    if sup.exists():
        pid = int(sup.read_text())
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    pids_file = run / "daemons.json"
    if not pids_file.exists():
        print(f"no {pids_file}; nothing to stop")
        return 0
    pids = json.loads(pids_file.read_text())
    roots = set(pids.values())
    started = cluster_processes(roots, str(scratch.resolve()))
    for name in ("slurmd", "slurmctld", "munged"):
        if name in pids:
            LocalSlurm._terminate(int(pids[name]), None, 30)
    _kill_all(started | cluster_processes(roots, str(scratch.resolve())))
    left = cluster_processes(roots, str(scratch.resolve()))
    print("stopped" if not left else f"LEFTOVER PIDS: {sorted(left)}")
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
