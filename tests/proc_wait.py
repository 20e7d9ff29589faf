"""Running a child process in a test without a wall-clock limit that a slow machine could hit.

A child is given up on only when it stops making progress: no new output and no CPU time used by
it or any of its descendants for ``stall_s`` seconds (a deadlock, a wait on a lost peer). A child
that is merely slow, on a loaded 2-core machine, keeps using CPU and is waited for however long it
takes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

STALL_S = 600.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds_of_tree(root: int) -> float:
  """CPU seconds (own and reaped children's) of ``root`` and its live descendants, from /proc (0.0 elsewhere)."""
  if not os.path.isdir("/proc"):
    return 0.0
  parents, ticks = {}, {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
      continue
    parents[int(entry)] = int(fields[1])
    ticks[int(entry)] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
  total, todo = 0, [root]
  while todo:
    pid = todo.pop()
    total += ticks.get(pid, 0)
    todo.extend(child for child, parent in parents.items() if parent == pid)
  return total / _TICKS


def _bytes_under(folder) -> int:
  if folder is None or not os.path.isdir(folder):
    return 0
  total = 0
  for dirpath, _, files in os.walk(folder):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(dirpath, name))
      except OSError:
        pass
  return total


def _stop_group(proc: subprocess.Popen) -> None:
  """SIGTERM to the child's process group (a launcher then stops its workers), SIGKILL if it lingers."""
  for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=grace)
      return
    except subprocess.TimeoutExpired:
      continue


def _drain(stream, sink: list[bytes], seen: list[float]) -> None:
  for chunk in iter(lambda: stream.read1(65536), b""):
    sink.append(chunk)
    seen[0] = time.monotonic()


def run(cmd, *, stall_s: float = STALL_S, watch=None, input: bytes | None = None, text: bool = True,
        **popen_kw) -> subprocess.CompletedProcess:
  """Like ``subprocess.run(cmd, capture_output=True)``, but waits as long as the child makes progress.

  Raises ``subprocess.TimeoutExpired`` (after killing the child) only when neither its output (stdout,
  stderr, and the files under the folder ``watch``, e.g. a launcher's per-process logs) nor its
  process tree's CPU time has moved for ``stall_s`` seconds.
  """
  # A session of its own, so that a stalled child is stopped with all its processes (a launcher's workers).
  proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **popen_kw)
  out, err, seen = [], [], [time.monotonic()]
  readers = [threading.Thread(target=_drain, args=(s, sink, seen), daemon=True)
             for s, sink in ((proc.stdout, out), (proc.stderr, err))]
  for t in readers:
    t.start()
  if input is not None:
    proc.stdin.write(input)
    proc.stdin.close()
  last, last_change = None, time.monotonic()
  while proc.poll() is None:
    time.sleep(0.5)
    mark = (cpu_seconds_of_tree(proc.pid), _bytes_under(watch))
    if mark != last:
      last, last_change = mark, time.monotonic()
    if time.monotonic() - max(seen[0], last_change) > stall_s:
      _stop_group(proc)
      raise subprocess.TimeoutExpired(cmd, stall_s, output=b"".join(out), stderr=b"".join(err))
  for t in readers:
    t.join()
  stdout, stderr = b"".join(out), b"".join(err)
  if text:
    stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
  return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
