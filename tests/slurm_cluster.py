"""A real one-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd started
from Debian's packages (``.ci/run`` installs ``slurmctld slurmd slurm-client munge``), every file
under one temporary folder, every daemon stopped by its process id afterwards.

The configuration is the smallest that runs jobs without systemd or cgroups: the node has the
machine's real CPU count, processes are tracked through /proc (``proctrack/linuxproc``, no
cgroups), ports are free ones picked at start, and job ids start at a random number, because
Lightning derives each job's rendezvous port from its id and two clusters (two CI runs) on one
machine must not pick the same ports.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")


def missing_reason() -> str | None:
    """Why a cluster cannot start here, or None."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): install Debian's slurmctld slurmd "
                "slurm-client munge (`.ci/run` does) to run the SLURM tests")  # fmt: skip
    if os.geteuid() != 0:
        return "the SLURM test cluster runs its daemons as root (slurmd starts jobs as their users)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=sparetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
FirstJobId={first_job_id}
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with :meth:`start`, always :meth:`stop`. ``env`` is what a client (sbatch, scontrol,
    ``spare-train slurm submit``) needs to talk to this cluster."""

    def __init__(self) -> None:
        # not under pytest's tmp folder: munged wants every folder above its socket open to all
        self.root = Path(tempfile.mkdtemp(prefix="spare-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        try:  # Lightning's rendezvous address is the node name: make it one that resolves
            socket.gethostbyname(self.node)
        except OSError:
            self.env["MASTER_ADDR"] = "127.0.0.1"
        self.pids: dict[str, int] = {}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self, timeout: float = 60) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.run("munged", f"--socket={self.root}/munge.socket", f"--key-file={key}",
                 f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/munged.log",
                 f"--seed-file={self.root}/munged.seed")  # fmt: skip
        self.pids["munged"] = self._pid("munged")
        self.conf.write_text(SLURM_CONF.format(
            node=self.node, root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(),
            cpus=len(os.sched_getaffinity(0)), first_job_id=random.randint(1000, 60000),
        ))  # fmt: skip
        self.run("slurmctld", "-f", str(self.conf))
        self.pids["slurmctld"] = self._pid("slurmctld")
        self.run("slurmd", "-f", str(self.conf), "-N", self.node)
        self.pids["slurmd"] = self._pid("slurmd")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node never became idle (state {state!r}):\n{self.logs()}")

    def _pid(self, daemon: str, timeout: float = 20) -> int:
        path = self.root / f"{daemon}.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return int(path.read_text())
            time.sleep(0.1)
        raise RuntimeError(f"{daemon} did not start:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted(self.root.glob("*.log")))  # fmt: skip

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop its daemons (by process id) and delete its folder."""
        if "slurmctld" in self.pids:
            self.run("scancel", "--user", "root", check=False)
            self.wait_until(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 30)
        for daemon in reversed(DAEMONS):
            pid = self.pids.pop(daemon, None)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self.wait_until(lambda: not _alive(pid), 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- jobs -------------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, …)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        """Wait until the job is finished (COMPLETED, FAILED, …) and return its record."""
        info: dict[str, str] = {}

        def finished() -> bool:
            info.update(self.job(job_id))
            return self.ended(info)

        if not self.wait_until(finished, timeout):
            raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s")
        return info

    @staticmethod
    def ended(info: dict[str, str]) -> bool:
        """Finished for good: neither pending, running, nor on its way back to the queue."""
        return info["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")

    @staticmethod
    def wait_until(condition, timeout: float, every: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(every)
        return False


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that never reaps it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
