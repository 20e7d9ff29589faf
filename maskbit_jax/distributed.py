"""Multi-process start-up: one call that does nothing on one host and joins the job everywhere else.

  from maskbit_jax import distributed
  distributed.initialize()                                   # see "Which mode" below
  distributed.initialize("10.0.0.1:8476", num_processes=4, process_id=rank)

Command lines add the flags with ``add_distributed_args(parser)`` and call
``initialize_from_args(args)`` first thing (no absl needed)::

  python -m maskbit_jax.train --config ... --workdir ... \
      --coordinator_address 10.0.0.1:8476 --num_processes 4 --process_id 0

Which mode (``plan_launch``, a pure function, decides before anything connects):

* explicit flags (``--coordinator_address/--num_processes/--process_id``, or
  ``JAX_COORDINATOR_ADDRESS`` for the address): exactly those; all three are
  required unless a cluster environment supplies the missing ones.
* SLURM (``srun``) or Open MPI (``mpirun``) with more than one task: jax's
  cluster auto-detection (coordinator = first node, process id = rank). Flags
  given as well must agree with the environment, or a ``ValueError`` names both.
* Cloud TPU VM (single- or multi-host slice, GKE TPU): jax's TPU detection.
* ``MASKBIT_DISTRIBUTED=on``: call ``jax.distributed.initialize()`` with
  auto-detection anyway (Kubernetes, mpi4py); ``=off``: never initialise.
* otherwise: a single process, nothing happens.

Bounded waits: a process other than 0 first waits (at most ``timeout_s``) for
the coordinator's port to accept connections and raises
``CoordinatorUnreachableError`` if it never does. Joining itself is also
bounded by ``timeout_s``: jax's own timeout ends the process with a C++
``DEADLINE_EXCEEDED`` abort and no Python exception, so a watchdog first prints
which process waited for what and exits with ``EXIT_JOIN_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from maskbit_jax import sharding as sharding_lib

ENV_SWITCH = "MASKBIT_DISTRIBUTED"
SWITCH_VALUES = {"auto": "auto", "": "auto", "on": "on", "1": "on", "true": "on", "off": "off", "0": "off",
                 "false": "off"}
DEFAULT_TIMEOUT_S = 300.0
EXIT_JOIN_TIMEOUT = 75  # EX_TEMPFAIL: the job did not assemble in time
# jax's own join timeout is set this much past ours, so the watchdog's clear message comes first.
_JAX_TIMEOUT_MARGIN_S = 30

log = logging.getLogger(__name__)


class CoordinatorUnreachableError(ConnectionError):
  """The coordinator (process 0) never accepted a connection within the timeout."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
  """How this process joins the job.

  ``mode``: ``single`` (nothing to do), ``explicit`` (flags) or ``cluster`` (jax
  auto-detection; fields it will detect itself are None). ``source`` names
  where the values came from, for messages.
  """

  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  source: str = "single process"

  @property
  def is_distributed(self) -> bool:
    return self.mode != "single"


# -- deciding (pure) ---------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
  """``host:port`` (``[v6addr]:port`` for IPv6) -> (host, port); a ValueError names the bad part."""
  if not isinstance(address, str) or ":" not in address:
    raise ValueError(f"--coordinator_address {address!r} must be HOST:PORT, e.g. 10.0.0.1:8476")
  host, port_text = address.rsplit(":", 1)
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  if not host:
    raise ValueError(f"--coordinator_address {address!r} has no host; use HOST:PORT")
  try:
    port = int(port_text)
  except ValueError:
    raise ValueError(f"--coordinator_address {address!r}: port {port_text!r} is not a number") from None
  if not 0 < port < 65536:
    raise ValueError(f"--coordinator_address {address!r}: port {port} is outside 1..65535")
  return host, port


def _check_count(value: Any, flag: str, minimum: int) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{flag} must be an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{flag} must be >= {minimum}, got {value}")
  return int(value)


def cluster_environment(environ: Mapping[str, str]) -> tuple[str, int, int, str, str] | None:
  """(name, process count, process id, count variable, id variable) of a SLURM or Open MPI launch, else None.

  Uses the variables jax's own detection uses, so whatever is found here is
  what ``jax.distributed.initialize()`` will pick up.
  """
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(k in environ for k in slurm):
    return "SLURM", int(environ["SLURM_NTASKS"]), int(environ["SLURM_PROCID"]), "SLURM_NTASKS", "SLURM_PROCID"
  if "OMPI_MCA_orte_hnp_uri" in environ and "OMPI_COMM_WORLD_SIZE" in environ:
    return ("Open MPI", int(environ["OMPI_COMM_WORLD_SIZE"]), int(environ.get("OMPI_COMM_WORLD_RANK", 0)),
            "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
  return None


def on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM with libtpu (jax's own check at import time)."""
  try:
    from jax._src import cloud_tpu_init
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def plan_launch(coordinator_address: str | None = None, num_processes: int | None = None,
                process_id: int | None = None, *, environ: Mapping[str, str] | None = None,
                tpu_vm: bool | None = None) -> LaunchPlan:
  """Decides how to join (see the module docstring); raises ValueError for inconsistent settings.

  Nothing connects here, so every mistake in flags or environment surfaces
  before any process waits on another.
  """
  environ = os.environ if environ is None else environ
  switch_text = environ.get(ENV_SWITCH, "auto").strip().lower()
  if switch_text not in SWITCH_VALUES:
    raise ValueError(f"{ENV_SWITCH}={environ.get(ENV_SWITCH)!r}: use auto, on or off")
  switch = SWITCH_VALUES[switch_text]
  num_processes = _check_count(num_processes, "--num_processes", 1)
  process_id = _check_count(process_id, "--process_id", 0)
  coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
  if coordinator_address is not None:
    parse_address(coordinator_address)
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise ValueError(f"--process_id {process_id} is out of range for --num_processes {num_processes} "
                     f"(ids are 0..{num_processes - 1})")
  explicit = (coordinator_address, num_processes, process_id) != (None, None, None)

  if switch == "off":
    if (num_processes or 1) > 1:
      raise ValueError(f"{ENV_SWITCH}=off but --num_processes {num_processes}: unset one of them")
    return LaunchPlan("single", source=f"{ENV_SWITCH}=off")

  cluster = cluster_environment(environ)
  if cluster is not None:
    name, count, rank, count_var, rank_var = cluster
    if num_processes is not None and num_processes != count:
      raise ValueError(f"--num_processes {num_processes} does not match the {count} processes {name} started "
                       f"({count_var}={count})")
    if process_id is not None and process_id != rank:
      raise ValueError(f"--process_id {process_id} does not match this process's {name} rank ({rank_var}={rank})")
    if count == 1 and coordinator_address is None:
      return LaunchPlan("single", source=f"{name} with one task")
    return LaunchPlan("cluster", coordinator_address, count, rank, source=name)

  if explicit:
    if num_processes == 1 and process_id in (None, 0) and coordinator_address is None:
      return LaunchPlan("single", source="--num_processes 1")
    missing = [flag for flag, v in (("--coordinator_address", coordinator_address), ("--num_processes", num_processes),
                                    ("--process_id", process_id)) if v is None]
    on_tpu = bool(missing) and switch != "on" and (on_cloud_tpu_vm() if tpu_vm is None else tpu_vm)
    if missing and (switch == "on" or on_tpu):  # the rest is left to jax's auto-detection
      source = "Cloud TPU" if on_tpu else f"{ENV_SWITCH}=on"
      return LaunchPlan("cluster", coordinator_address, num_processes, process_id, source=source)
    if missing:
      raise ValueError(f"{', '.join(missing)} missing: a multi-process run outside SLURM, Open MPI or a Cloud TPU "
                       "needs --coordinator_address HOST:PORT, --num_processes N and --process_id I on every process")
    return LaunchPlan("explicit", coordinator_address, num_processes, process_id, source="flags")

  if switch == "on":
    return LaunchPlan("cluster", source=f"{ENV_SWITCH}=on")
  if on_cloud_tpu_vm() if tpu_vm is None else tpu_vm:
    return LaunchPlan("cluster", source="Cloud TPU")
  return LaunchPlan("single")


# -- joining -----------------------------------------------------------------------------


def wait_for_coordinator(address: str, timeout_s: float, *, poll_s: float = 0.5) -> float:
  """Waits until ``address`` accepts a TCP connection; returns the seconds waited.

  Raises ``CoordinatorUnreachableError`` after ``timeout_s`` (process 0 may
  legitimately start a little later than the others, hence the retries).
  """
  host, port = parse_address(address)
  start = time.monotonic()
  deadline = start + timeout_s
  last_error: OSError | None = None
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      with socket.create_connection((host, port), timeout=max(0.1, min(2.0, remaining))):
        return time.monotonic() - start
    except OSError as e:
      last_error = e
    time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
  raise CoordinatorUnreachableError(
      f"coordinator {address} did not accept a connection within {timeout_s:g} s (last error: {last_error}). "
      "Process 0 must be running with the same --coordinator_address; check the host name, the port and any "
      "firewall between the hosts")


def _join_watchdog(plan: LaunchPlan, timeout_s: float) -> threading.Timer:
  """A timer that ends the process with a clear message if joining takes longer than ``timeout_s``.

  jax's join blocks in C++ and, on its own timeout, aborts without a Python
  exception; this fires first. The waiting call releases the GIL, so the timer
  thread runs.
  """
  who = "this process" if plan.process_id is None else f"process {plan.process_id}"
  of = "" if plan.num_processes is None else f" of {plan.num_processes}"
  where = plan.coordinator_address or "the auto-detected coordinator"

  def fire():
    sys.stderr.write(
        f"\nmaskbit_jax.distributed: {who}{of} could not join the job at {where} ({plan.source}) within "
        f"{timeout_s:g} s: not every process connected. Check that all processes were started, with the same "
        f"--num_processes and --coordinator_address, and read the other processes' logs.\n")
    sys.stderr.flush()
    os._exit(EXIT_JOIN_TIMEOUT)

  timer = threading.Timer(timeout_s, fire)
  timer.daemon = True
  return timer


def _check_joined(plan: LaunchPlan) -> None:
  if plan.num_processes is not None and jax.process_count() != plan.num_processes:
    raise RuntimeError(f"joined a job of {jax.process_count()} processes but expected {plan.num_processes} "
                       f"({plan.source}): the processes disagree on --num_processes")
  if plan.process_id is not None and jax.process_index() != plan.process_id:
    raise RuntimeError(f"joined as process {jax.process_index()} but expected {plan.process_id} ({plan.source})")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, timeout_s: float = DEFAULT_TIMEOUT_S,
               environ: Mapping[str, str] | None = None) -> LaunchPlan:
  """Joins the multi-process job if there is one (see the module docstring); returns the plan followed.

  Must run before anything touches a jax device. Calling it again after a
  successful join only checks that the job matches.
  ``local_device_ids``: the accelerators this process drives (one process per
  node under SLURM: all of them; jax's SLURM detection otherwise assumes one
  process per GPU). ``JAX_LOCAL_DEVICE_IDS`` works too.
  """
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be positive, got {timeout_s}")
  plan = plan_launch(coordinator_address, num_processes, process_id, environ=environ)
  if not plan.is_distributed:
    return plan
  if jax.distributed.is_initialized():
    _check_joined(plan)
    return plan
  start = time.monotonic()
  if plan.coordinator_address is not None and plan.process_id not in (None, 0):
    wait_for_coordinator(plan.coordinator_address, timeout_s)
  remaining = max(1.0, timeout_s - (time.monotonic() - start))
  kwargs = dict(coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
                process_id=plan.process_id, local_device_ids=local_device_ids,
                initialization_timeout=int(remaining) + _JAX_TIMEOUT_MARGIN_S)
  if plan.mode == "explicit":
    kwargs["cluster_detection_method"] = "deactivate"
  watchdog = _join_watchdog(plan, remaining)
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  finally:
    watchdog.cancel()
  _check_joined(plan)
  log.info("joined %d processes (%s) in %.1f s: %d local / %d global devices", jax.process_count(), plan.source,
           time.monotonic() - start, jax.local_device_count(), jax.device_count())
  return plan


def is_main_process() -> bool:
  """True on process 0 (the one that writes logs, checkpoint metadata and results)."""
  return jax.process_index() == 0


class _ProcessFormatter(logging.Formatter):
  def __init__(self, index: int, count: int):
    super().__init__(f"%(asctime)s [p{index}/{count}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def setup_logging(level: int = logging.INFO, *, process_index: int | None = None,
                  process_count: int | None = None) -> None:
  """Root logging: process 0 at ``level``, every other process at WARNING (their errors still show).

  Lines carry ``[pI/N]`` so interleaved logs of several processes stay readable.
  Meant for entry points: it replaces the root logger's handlers (a library's
  ``basicConfig`` would otherwise print every line twice). Call after
  ``initialize`` (the process index is read from jax by default).
  """
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  root = logging.getLogger()
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_ProcessFormatter(process_index, process_count))
  handler._maskbit_distributed = True
  for h in list(root.handlers):
    root.removeHandler(h)
  root.addHandler(handler)
  root.setLevel(level if process_index == 0 else max(level, logging.WARNING))


# -- command lines -----------------------------------------------------------------------


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds ``--coordinator_address/--num_processes/--process_id/--distributed_timeout_s`` to an argparse CLI."""
  g = parser.add_argument_group("multi-process", "leave unset on one host, under SLURM/Open MPI and on Cloud TPU "
                                                 "(detected); see maskbit_jax/distributed.py")
  g.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0 (all processes pass the same)")
  g.add_argument("--num_processes", type=int, default=None, help="total number of processes")
  g.add_argument("--process_id", type=int, default=None, help="this process, 0..num_processes-1")
  g.add_argument("--distributed_timeout_s", type=float, default=DEFAULT_TIMEOUT_S,
                 help="give up joining the job after this many seconds (default %(default)s)")
  return parser


def initialize_from_args(args: argparse.Namespace, *, log_level: int = logging.INFO) -> LaunchPlan:
  """``initialize`` from the flags of ``add_distributed_args``, then ``setup_logging``."""
  plan = initialize(args.coordinator_address, args.num_processes, args.process_id,
                    timeout_s=args.distributed_timeout_s)
  setup_logging(log_level)
  return plan


# -- batches -----------------------------------------------------------------------------


def check_global_batch(global_batch: int, num_processes: int, local_devices: int) -> int:
  """Returns the per-process batch; raises ValueError unless the global batch splits evenly over every device."""
  global_batch = _check_count(global_batch, "global batch size", 1)
  num_processes = _check_count(num_processes, "num_processes", 1)
  local_devices = _check_count(local_devices, "local device count", 1)
  devices = num_processes * local_devices
  if global_batch % devices:
    lower, upper = global_batch // devices * devices, -(-global_batch // devices) * devices
    near = f"{upper}" if lower == 0 else f"{lower} or {upper}"
    raise ValueError(f"global batch {global_batch} does not divide over {devices} devices ({num_processes} "
                     f"processes x {local_devices} local devices); use a multiple of {devices}, e.g. {near}")
  return global_batch // num_processes


def _local_row_blocks(s) -> int:
  """How many distinct batch slices (dimension 0) this process's devices hold under NamedSharding ``s``."""
  spec = tuple(s.spec)
  axes = spec[0] if spec else None
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  mesh = s.mesh
  positions = [mesh.axis_names.index(a) for a in axes]
  local = {d.id for d in mesh.local_devices}
  return len({tuple(idx[p] for p in positions) for idx in np.ndindex(mesh.devices.shape)
              if mesh.devices[idx].id in local})


def global_batch_from_local(local_batch_tree, mesh, batch_sharding=None):
  """This process's rows of a batch (numpy pytree) -> global ``jax.Array``s sharded over ``mesh``.

  ``batch_sharding``: one Sharding for every leaf, a pytree of them matching
  the batch (e.g. ``batch_sh`` of ``make_jitted_step``), or None for
  ``sharding.batch_sharding(mesh, ndim)`` per leaf. Each process passes the
  rows of the batch shards its devices hold, in global order: with
  ``create_mesh`` on CPU and GPU, or one process per slice, process ``p`` of
  ``P`` holds rows ``[p * B / P, (p + 1) * B / P)`` of a global batch ``B``;
  on a TPU torus a host's devices may hold shards that are not adjacent
  (``jax.make_array_from_process_local_data`` maps its rows onto them in
  order). Training data is drawn per process, so only bit-for-bit comparisons
  across topologies depend on which rows those are.
  """
  local = jax.tree.map(np.asarray, local_batch_tree)
  paths_leaves = jax.tree_util.tree_flatten_with_path(local)[0]
  if not paths_leaves:
    raise ValueError("the local batch is empty (no arrays)")
  rows = {}
  for path, leaf in paths_leaves:
    name = jax.tree_util.keystr(path) or "batch"
    if leaf.ndim == 0:
      raise ValueError(f"batch entry {name} is a scalar; every entry needs a leading batch dimension")
    rows[name] = leaf.shape[0]
  if len(set(rows.values())) > 1:
    raise ValueError(f"batch entries disagree on the local batch size: {rows}")

  if batch_sharding is None:
    shardings = jax.tree.map(lambda x: sharding_lib.batch_sharding(mesh, x.ndim), local)
  elif isinstance(batch_sharding, Sharding):
    shardings = jax.tree.map(lambda _: batch_sharding, local)
  else:
    shardings = batch_sharding
  if jax.tree.structure(shardings) != jax.tree.structure(local):
    raise ValueError(f"batch_sharding has structure {jax.tree.structure(shardings)}, the batch "
                     f"{jax.tree.structure(local)}")

  def one(path, s, x):
    blocks = _local_row_blocks(s) if hasattr(s, "mesh") and hasattr(s, "spec") else 1
    if x.shape[0] % blocks:
      raise ValueError(f"batch entry {jax.tree_util.keystr(path) or 'batch'}: {x.shape[0]} local rows do not split "
                       f"over this process's {blocks} batch shards")
    return jax.make_array_from_process_local_data(s, x)

  return jax.tree_util.tree_map_with_path(one, shardings, local)


def process_batch_ids(num_batches: int, process_index: int, process_count: int) -> list[int]:
  """The batches process ``process_index`` runs, one per step: step ``s`` is batch ``s * process_count +
  process_index``. Every process runs the same number of steps (ids ``>= num_batches`` are padding, run
  so that collectives stay aligned), and step ``s`` of processes 0, 1, ... covers consecutive batches."""
  steps = -(-num_batches // process_count)
  return [s * process_count + process_index for s in range(steps)]


def gather_batches(steps: list[dict[str, np.ndarray]], num_items: int) -> dict[str, np.ndarray]:
  """Every process's per-step results -> the ``num_items`` results of the whole job, in item order.

  ``steps``: this process's results of its ``process_batch_ids`` steps, each a dict of arrays with the
  batch size's rows (a short last batch is padded, e.g. by repeating its last row). Collective: every
  process calls it with as many steps, of the same shapes; every process gets the whole result.
  """
  if not steps:
    raise ValueError("no steps to gather")
  local = {k: np.stack([np.asarray(step[k]) for step in steps]) for k in steps[0]}  # [steps, batch, ...]
  if jax.process_count() == 1:
    return {k: v.reshape(-1, *v.shape[2:])[:num_items] for k, v in local.items()}
  out = {}
  for k, v in local.items():
    every = np.asarray(multihost_utils.process_allgather(v))  # [processes, steps, batch, ...]
    # step s of process p is batch s * P + p: steps outermost, then processes, is the batches' order
    out[k] = np.swapaxes(every, 0, 1).reshape(-1, *v.shape[2:])[:num_items]
  return out


def host_copy(tree: Any) -> Any:
  """Whole host (numpy) copies of ``tree``'s arrays, on every process.

  An array sharded over devices of several processes is gathered (a collective: every process
  must call this with the same tree); others, replicated or local, are simply fetched.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def one_batch_behind(batches, dispatch):
  """``(batch, host result)`` of ``dispatch(batch)`` for each batch, the device work of batch i+1 dispatched
  before batch i's result is fetched, so the host never waits on an idle device."""
  pending = None
  for batch in batches:
    out = dispatch(batch)
    if pending is not None:
      yield pending[0], jax.device_get(pending[1])
    pending = (batch, out)
  if pending is not None:
    yield pending[0], jax.device_get(pending[1])
