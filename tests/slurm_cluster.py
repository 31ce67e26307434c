"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd (Debian's packages, run as root)
with their configuration, state, sockets and logs in one temporary folder, on free ports, stopped afterwards.

    with SlurmCluster(tmp_path / "slurm", cpus=4) as cluster:
        job = cluster.submit(["launch/slurm/train_1node.sbatch", ...])
        cluster.wait(job, "COMPLETED")

`python -m tests.slurm_cluster FOLDER` starts one and keeps it up until Ctrl-C (for trying commands by hand:
it prints the SLURM_CONF to export). Nothing outside FOLDER is written; the daemons are stopped and every job
is cancelled even when a test fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
INSTALL = "apt-get install slurmctld slurmd slurm-client munge"


def why_unavailable() -> str | None:
    """None when a cluster can be started here, else the reason (for pytest.skip)."""
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): {INSTALL}"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root (SlurmUser=root): run the Slurm tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """One controller and one compute node named after this host, partition `debug` (the default)."""

    def __init__(self, folder: Path, cpus: int = 4, memory_mb: int = 4000, kill_wait: int = 30,
                 requeue_delay: int = 10):
        self.folder = Path(folder)
        self.node = socket.gethostname().split(".")[0]
        self.cpus, self.memory_mb, self.kill_wait, self.requeue_delay = cpus, memory_mb, kill_wait, requeue_delay
        self.conf = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":  # a test run inside a Slurm job must not leak that job's settings
                del self.env[key]

    # --- starting and stopping -------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder / "munge", 0o700)
        key = self.folder / "munge" / "munge.key"
        self._run([_binary("mungekey"), "--create", f"--keyfile={key}"])
        self._start("munged", [_binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.folder / 'munge' / 'munged.pid'}",
                               f"--log-file={self.folder / 'log' / 'munged.log'}",
                               f"--seed-file={self.folder / 'munge' / 'munged.seed'}"])
        self._wait_until(lambda: self.munge_socket.exists(), timeout, "munged to open its socket")
        self.conf.write_text(self._config())
        self._start("slurmctld", [_binary("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._wait_until(lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]),
                         timeout, "slurmctld to answer `scontrol ping`")
        self._start("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_until(lambda: self._out(["sinfo", "-h", "-N", "-o", "%t"]).strip() == "idle", timeout,
                         "the node to be idle in sinfo")

    def stop(self) -> None:
        """Cancel every job (their slurmstepd and processes go with them), then stop the daemons."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._ok(["scancel", "--full", f"--user={os.getuid()}"])
            try:
                self._wait_until(lambda: not self._out(["squeue", "-h", "-o", "%i"]).strip(), 60, "no jobs left")
            except TimeoutError:
                pass  # the daemons are stopped all the same
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _config(self) -> str:
        f, ctl_port, node_port = self.folder, _free_port(), _free_port()
        return f"""# written by tests/slurm_cluster.py: a throwaway one-node cluster
ClusterName=templategpt-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={self.munge_socket},cred_expire={self.requeue_delay}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log' / 'slurmctld.log'}
SlurmdLogFile={f / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: processes are tracked through /proc, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# schedule at once (the defaults wait up to 30-60 s), and refuse at submission what a partition cannot run
SchedulerParameters=bf_interval=1,sched_interval=1
EnforcePartLimits=ALL
KillWait={self.kill_wait}
MinJobAge=600
MailProg=/bin/true
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=60 State=UP
"""

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=self.folder)
        log.close()

    def _wait_until(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        out = []
        for path in sorted((self.folder / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # --- commands --------------------------------------------------------------------------------------
    def run(self, argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, env=kwargs.pop("env", self.env), capture_output=True, text=True,
                                timeout=kwargs.pop("timeout", 60), **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _run(self, argv: list[str]) -> None:
        self.run(argv)

    def _ok(self, argv: list[str]) -> bool:
        try:
            return self.run(argv, check=False, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _out(self, argv: list[str]) -> str:
        try:
            return self.run(argv, check=False, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    def submit(self, argv: list[str], **kwargs) -> str:
        """sbatch --parsable ARGV; returns the job id."""
        return self.run(["sbatch", "--parsable", *argv], **kwargs).stdout.strip().split(";")[0]

    def state(self, job: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, FAILED, ...); '' once it has left the controller."""
        return self._out(["scontrol", "show", "job", job, "-o"]).partition("JobState=")[2].split(" ")[0]

    def job_field(self, job: str, field: str) -> str:
        return self._out(["scontrol", "show", "job", job, "-o"]).partition(f" {field}=")[2].split(" ")[0]

    def wait(self, job: str, *states: str, timeout: float = 240) -> str:
        """Wait until the job reaches one of states (default: any end state); returns the state."""
        final = states or ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
        state = ""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.state(job)
            if state in final:
                return state
            time.sleep(0.3)
        raise TimeoutError(f"job {job} is {state or 'gone'} after {timeout:.0f} s, not {'/'.join(final)}:\n"
                           f"{self._out(['scontrol', 'show', 'job', job])}\n{self.logs()}")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m tests.slurm_cluster FOLDER   (a one-node Slurm until Ctrl-C)", file=sys.stderr)
        return 2
    reason = why_unavailable()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    import signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID stops the cluster as Ctrl-C does
    with SlurmCluster(Path(argv[0]).absolute()) as cluster:
        print(f"export SLURM_CONF={cluster.conf}\n(Ctrl-C stops the cluster)", flush=True)
        try:
            while all(p.poll() is None for p in cluster.procs.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
