"""Watching a job's processes: every process a launcher starts, however deep (papermill kernels run in sessions of their
own), is followed, and all of them end when one rank fails or the launcher is stopped."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import KitError
from ..files import write_json
from .notebooks import TRAIN


POLL_SECONDS = 0.5


KILL_GRACE_SECONDS = 5.0


FAILED_MARKER = "job_failed.json"  # written by the launcher that saw a rank fail; other servers sharing the folder stop


def _running(process):
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RankWatch:
    """Starts this server's processes, follows every process they start (papermill kernels run in sessions of
    their own, out of reach of msrun's process-group kill), and ends them all when one rank fails."""

    def __init__(self, output_dir, log=print):
        self.output_dir, self.log = Path(output_dir), log
        # ranked: (pid, start time) -> (role, rank, process) for each rank's worker and notebook kernel
        self.top, self.seen, self.ranked = [], {}, {}
        self.started = time.time()

    def start(self, command, env, log_path=None, rank=None):
        handle = open(log_path, "w") if log_path else None
        proc = subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None, start_new_session=True
        )
        self.top.append((proc, rank, log_path, handle))
        return proc

    def _follow(self):
        import psutil

        for proc, *_ in self.top:
            try:
                family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in family:
                try:  # a short-lived process may be gone already
                    key = (child.pid, child.create_time())
                except psutil.Error:
                    continue
                if key not in self.seen:
                    self.seen[key] = child
                    role = self._rank_role(child)
                    if role is not None:
                        self.ranked[key] = (*role, child)

    @staticmethod
    def _rank_role(process):
        """("worker", rank) for `python -m edsr_lib.launch worker ...` itself (not msrun, whose arguments hold the same
        words, nor msrun's child before it execs, nor the scheduler msrun starts with the same command), ("kernel",
        rank) for the notebook kernel papermill starts for it, else None."""
        import psutil

        try:
            cmdline, env = process.cmdline(), process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        if not env.get("RANK_ID", "").isdigit():
            return None
        if cmdline[1:4] == ["-m", "edsr_lib.launch", "worker"] and env.get("MS_ROLE") != "MS_SCHED":
            return "worker", int(env["RANK_ID"])
        if any("ipykernel_launcher" in part for part in cmdline):
            return "kernel", int(env["RANK_ID"])
        return None

    def _ended_unfinished(self, role):
        """The first rank whose `role` process ended without the rank's results, else None (forgetting ended ones)."""
        for key, (kind, rank, process) in list(self.ranked.items()):
            if kind == role and not _running(process):
                del self.ranked[key]
                if not self._finished(rank):
                    return rank
        return None

    def _finished(self, rank):
        metrics = self.output_dir / f"rank_{rank}" / "metrics.json"
        return metrics.is_file() and metrics.stat().st_mtime >= self.started

    def _failure(self):
        """(rank or None, reason, seen here) for the first failure, else None; `seen here` is False when another
        server's launcher reported it through the shared folder."""
        # A rank's kernel dying is the root cause when it happens: the other ranks then fail too, in their own
        # time, and the launcher must name the rank that failed first, not the first one it notices.
        rank = self._ended_unfinished("kernel")
        if rank is not None:
            return rank, f"rank {rank}'s notebook kernel died", True
        for proc, rank, log_path, _ in self.top:
            code = proc.poll()
            if code:
                where = f" (log: {log_path})" if log_path else ""
                name = f"rank {rank}" if rank is not None else proc.args[0]
                return rank, f"{name} exited with {code}{where}", True
        rank = self._ended_unfinished("worker")
        if rank is not None:
            return rank, f"rank {rank} ended before finishing", True
        marker = self.output_dir / FAILED_MARKER
        if marker.is_file() and marker.stat().st_mtime >= self.started:
            try:
                return None, "another server stopped the job: " + json.loads(marker.read_text())["reason"], False
            except (OSError, ValueError, KeyError):
                return None, "another server stopped the job", False
        return None

    def stop_all(self):
        """SIGTERM to every process seen, then SIGKILL to what is left after KILL_GRACE_SECONDS."""
        self._follow()
        end_processes([p for p in self.seen.values() if _running(p)])
        for proc, *_ in self.top:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)

    def wait(self):
        """Until every process ends well, or one rank fails: then stop the rest and raise naming it."""
        try:
            while True:
                self._follow()
                failed = self._failure()
                if failed:
                    rank, reason, seen_here = failed
                    logs = self.rank_logs(rank)
                    if seen_here:
                        write_json(self.output_dir / FAILED_MARKER, {"rank": rank, "reason": reason})
                    self.log(f"{reason}; stopping the other ranks")
                    raise KitError(f"distributed training failed: {reason}" + (f"; see {logs}" if logs else ""))
                if all(proc.poll() == 0 for proc, *_ in self.top):
                    self.stop_all()  # leftovers, e.g. a kernel still shutting down
                    return
                time.sleep(POLL_SECONDS)
        except BaseException:  # a failed rank (the KitError above), Ctrl-C, or a fault here: end every process
            self.stop_all()
            raise
        finally:
            for *_, handle in self.top:
                if handle:
                    handle.close()

    def rank_logs(self, rank):
        if rank is None:
            return ""
        candidates = [
            self.output_dir / "msrun_logs" / f"worker_{rank}.log",
            self.output_dir / f"rank_{rank}" / "train.log",
            self.output_dir / f"rank_{rank}" / TRAIN,
        ]
        return ", ".join(str(p) for p in candidates if p.exists())


# How long the launcher's own shutdown may take after a stop signal before the last resort ends it.
STOP_DEADLINE_SECONDS = 30.0


class Stopped(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGINT reached a launcher (from `kill`, `timeout`, a batch scheduler or Ctrl-C). A
    KeyboardInterrupt, because papermill runs the notebook on an asyncio loop, which re-raises only that (and
    SystemExit) from a callback the signal interrupts: any other exception there is logged and dropped, and the
    launcher would go on running."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def stopped_message(signum, ended):
    return f"edsr: stopped by {signal.Signals(signum).name}; ended the {ended} process(es) this launcher had started"


def stop_on(signum, frame):
    """The launcher's signal handler: raise Stopped in the main thread, for main() to end every process this one
    started and exit 128 + signum; should the shutdown hang, a watchdog does the same after STOP_DEADLINE_SECONDS."""

    def last_resort():
        time.sleep(STOP_DEADLINE_SECONDS)
        ended = stop_descendants()
        print(stopped_message(signum, ended) + " (forced)", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    threading.Thread(target=last_resort, daemon=True).start()
    raise Stopped(signum)


def stop_descendants(grace=KILL_GRACE_SECONDS):
    """End every process this one started, however deep (msrun, workers, papermill kernels in their own sessions):
    SIGTERM, then SIGKILL after `grace` seconds. Returns how many there were."""
    import psutil

    try:
        family = psutil.Process().children(recursive=True)
    except psutil.Error:
        return 0
    end_processes(family, grace)
    return len(family)


def end_processes(processes, grace=KILL_GRACE_SECONDS):
    """SIGTERM to each of `processes` (psutil), then SIGKILL to those still there after `grace` seconds."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)


def threading_main():
    return threading.current_thread() is threading.main_thread()
