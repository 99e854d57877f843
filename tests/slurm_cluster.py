"""A real single-node Slurm cluster for the slow tests: ``munged``, ``slurmctld`` and ``slurmd`` started as
plain daemons from a generated config in a temporary folder, and stopped by the process ids they were
started with (nothing else on the machine is touched).

The config is the smallest that runs jobs without systemd or cgroups: ``proctrack/linuxproc``,
``task/none``, no accounting, one node at 127.0.0.1 in one partition ``debug``, free ports. Clients
(``sbatch``, ``squeue``, the tests' launchers) find it through ``SLURM_CONF``, and munge through the
``AuthInfo=socket=`` line of that config, so the machine's own ``/etc/slurm`` and munge are never used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun")
PARTITION = "debug"
NODE = "mlcdf-node"


def missing_binaries() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in (*DAEMONS, "mungekey", *CLIENTS) if shutil.which(name, path=search) is None]


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))
        sockets.append(bound)
    ports = [bound.getsockname()[1] for bound in sockets]
    for bound in sockets:
        bound.close()
    return ports


@dataclass
class SlurmCluster:
    folder: Path
    conf: Path
    #: What a client needs in its environment: ``SLURM_CONF`` (and the daemons' folder on ``PATH``).
    env: dict[str, str]
    processes: list[subprocess.Popen]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> dict[str, str]:
        """The jobs Slurm knows: name -> state."""
        listed = self.run("squeue", "-h", "-o", "%j %T").stdout.split("\n")
        return dict(line.split(" ", 1) for line in listed if line.strip())

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)


def _config(folder: Path, ports: list[int], cpus: int) -> str:
    return "\n".join(
        [
            "ClusterName=mlcdftest",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"AuthInfo=socket={folder / 'munge.socket'}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            # Time limits are checked every few seconds, and a job past its limit is killed soon after
            # (the tests' time-limit case would otherwise take minutes).
            "KillWait=5",
            "OverTimeLimit=0",
            "MinJobAge=60",  # a job that ended stays listed, with its state (TIMEOUT), for a minute
            "SchedulerParameters=sched_interval=2",
            "MessageTimeout=20",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@contextmanager
def slurm_cluster(folder: Path, cpus: int = 2) -> Iterator[SlurmCluster]:
    """Start the daemons in ``folder``; stop exactly them on leaving."""
    for name in ("state", "spool", "munge"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, _free_ports(2), cpus))
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "PATH": os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]),
    }
    key = folder / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, env=env, capture_output=True)
    os.chmod(key, 0o600)
    # Each in the foreground, as a child of this process: its process id is the one to stop.
    commands = [
        [
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={folder / 'munge.socket'}",
            f"--pid-file={folder / 'munge' / 'munged.pid'}",
            f"--log-file={folder / 'munge' / 'munged.log'}",
            f"--seed-file={folder / 'munge' / 'munged.seed'}",
        ],
        ["slurmctld", "-D", "-i", "-f", str(conf)],
        ["slurmd", "-D", "-N", NODE, "-f", str(conf)],
    ]
    processes: list[subprocess.Popen] = []
    cluster = SlurmCluster(folder, conf, env, processes)
    try:
        for command in commands:
            with open(folder / f"{command[0]}.out", "w") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if command[0] == "munged":
                _wait_for(lambda: (folder / "munge.socket").exists(), "munged", folder)
        _wait_for(lambda: _node_idle(cluster), "the node to be idle", folder)
        yield cluster
    finally:
        _stop(processes)


def _node_idle(cluster: SlurmCluster) -> bool:
    shown = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False)
    return shown.returncode == 0 and shown.stdout.strip() in ("idle", "mix", "alloc")


def _wait_for(ready, what: str, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")) + sorted(folder.glob("*.out")))
            raise RuntimeError(f"Slurm test cluster: waited {timeout:.0f}s for {what}\n{logs}")
        time.sleep(0.3)


def _stop(processes: list[subprocess.Popen]) -> None:
    # slurmd first: it ends the job steps it started; the controller and munge after it.
    for process in reversed(processes):
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
