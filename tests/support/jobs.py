"""Running an experiment script as a user would, in the background, and checking its end.

``Job`` collects the output lines as they come, so a test can wait for a line the child
prints (never for a fixed time) and then send a signal; ``family`` and ``assert_all_gone``
check that no process of the job survives it.
"""
import os
import re
import subprocess
import sys
import threading
import time

import psutil


class Job:
    """A command running in the background whose output lines are collected as they come."""

    def __init__(self, args, cwd, env=None, own_process_group=False):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=own_process_group,
        )  # fmt: skip
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def wait_for(self, pattern, count=1, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.output)) >= count:
                return
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                if len(re.findall(pattern, self.output)) >= count:
                    return
                raise AssertionError(f"exited before {pattern!r}:\n{self.output}")
            time.sleep(0.1)
        self.process.kill()
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output}")

    def finish(self, timeout=120):
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"did not end within {timeout} s:\n{self.output}") from None
        self._reader.join(timeout=5)
        return code, time.monotonic() - self.started


def job_args(*args, script, output):
    return [sys.executable, str(script), "--output-dir", str(output), "--no-cuda", *args]


def alive(processes):
    survivors = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(process)
        except psutil.NoSuchProcess:
            pass
    return survivors


def assert_all_gone(processes, within=15):
    deadline = time.monotonic() + within
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(processes), alive(processes)


def family(job):
    root = psutil.Process(job.process.pid)
    return [root, *root.children(recursive=True)]
