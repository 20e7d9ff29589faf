"""Running a child process in a test without a wall-clock limit that a slow machine could hit.

A child is given up on only when it stops making progress: no new output and no CPU time used by
it or any of its descendants for ``stall_s`` seconds (a deadlock, a wait on a lost peer). A child
that is merely slow, on a loaded 2-core machine, keeps using CPU and is waited for however long it
takes.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

STALL_S = 600.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks_of_tree(root: int) -> int | None:
  """utime + stime (+ reaped children's) of ``root`` and its live descendants, from /proc; None without /proc."""
  if not os.path.isdir("/proc"):
    return None
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
  return total


def _drain(stream, sink: list[bytes], seen: list[float]) -> None:
  for chunk in iter(lambda: stream.read1(65536), b""):
    sink.append(chunk)
    seen[0] = time.monotonic()


def run(cmd, *, stall_s: float = STALL_S, input: bytes | None = None, text: bool = True,
        **popen_kw) -> subprocess.CompletedProcess:
  """Like ``subprocess.run(cmd, capture_output=True)``, but waits as long as the child makes progress.

  Raises ``subprocess.TimeoutExpired`` (after killing the child) only when neither its output nor
  its process tree's CPU time has moved for ``stall_s`` seconds.
  """
  proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kw)
  out, err, seen = [], [], [time.monotonic()]
  readers = [threading.Thread(target=_drain, args=(s, sink, seen), daemon=True)
             for s, sink in ((proc.stdout, out), (proc.stderr, err))]
  for t in readers:
    t.start()
  if input is not None:
    proc.stdin.write(input)
    proc.stdin.close()
  last_cpu, last_cpu_change = _cpu_ticks_of_tree(proc.pid), time.monotonic()
  while proc.poll() is None:
    time.sleep(0.5)
    cpu = _cpu_ticks_of_tree(proc.pid)
    if cpu != last_cpu:
      last_cpu, last_cpu_change = cpu, time.monotonic()
    if time.monotonic() - max(seen[0], last_cpu_change) > stall_s:
      proc.kill()
      proc.wait()
      raise subprocess.TimeoutExpired(cmd, stall_s, output=b"".join(out), stderr=b"".join(err))
  for t in readers:
    t.join()
  stdout, stderr = b"".join(out), b"".join(err)
  if text:
    stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
  return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
