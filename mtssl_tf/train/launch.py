"""Running pre-training: data checks, the coordinator, the local supervisor, export.

Roles (the same code on one machine and on a cluster):
* ps / worker: a `tf.distribute.Server` that waits (`distribute.cluster.run_server`).
* coordinator (the chief): builds the model under ParameterServerStrategy and trains
  (`run_coordinator`). When a parameter server dies, its schedule/join calls fail and
  the strategy cannot be rebuilt in the same process (its eager context keeps the
  dead channel: measured), so the coordinator exits with `EXIT_CLUSTER_FAILURE` and is
  restarted from the last checkpoint, by Kubernetes/your scheduler on a cluster, by
  `supervise_local` on one machine.
* local supervisor (`supervise_local`): starts the servers as subprocesses (cluster
  spec on 127.0.0.1), runs the coordinator as a subprocess, restarts servers and
  coordinator after a cluster failure (bounded), tears everything down on exit, Ctrl-C
  or SIGTERM. TensorFlow's servers listen on all interfaces and are unauthenticated, so
  where Linux allows it servers and coordinator run in a private network namespace
  that has only `lo` (mtssl_tf/distribute/private_net.py; `private_network`).

Everything that can be wrong with a config or its data is checked by `prepare` before
any server starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

from mtssl_tf.configs.base import ConfigError, save_config
from mtssl_tf.data.sources import DataError
from mtssl_tf.tasks import build_tasks
from mtssl_tf.tasks.base import Task
from mtssl_tf.train.experiment import ExperimentConfig
from mtssl_tf.trunk.inputs import PREPROCESSING

# Kept in coordinator.log, not shown: TF's C++ start-up errors about CUDA plugin factories
# (TF 2.15 registers them twice; harmless on a CPU), and gRPC errors of the remote eager
# context removing functions the servers never had (several lines each, all matched; the
# trainer now frees its pre-connect functions first, so none appear in a normal run). Both
# come from C++, past any Python logger; checkpoint and export warnings are fixed at source
# (train/checkpointing.py, export/saved_model.py).
_NOISE = re.compile(rb'cuda|cuDNN|cuFFT|cuBLAS|TensorRT|grpc|GRPC|remote target|Failed to (remove|register) function')

# The coordinator's exit code for "the cluster failed; restart me from the checkpoint".
EXIT_CLUSTER_FAILURE = 75
# Written into model_dir by a coordinator the moment it catches a cluster failure, before anything that
# could abort it: the supervisor reads it when the process died by a signal instead of exiting with the code.
CLUSTER_FAILURE_MARKER = 'cluster_failure.json'
# What an export may feed the trunk: a `trunk.inputs.PREPROCESSING` convention, or 'as_trained' (the run's).
EXPORT_INPUTS = (*PREPROCESSING, 'as_trained')


@dataclasses.dataclass
class Prepared:
  """What `prepare` built, reused by the rest of the process: a run is set up once (issue 15).

  Attributes:
    tasks: the enabled tasks, in registry order.
    sources: task name -> its data source (its own, or the synthetic world's).
    world: the synthetic world used, None when every task has its own source.
    samples: task name -> one batch, read as the distributed trainer's coordinator-side
      samples (seed 0, repeated): they give the workers' batch structure, build the
      variables and feed the image summaries.
  """

  tasks: Dict[str, Task]
  sources: Dict[str, str]
  world: Optional[dict]
  samples: Dict[str, Dict[str, Any]]


def enabled_tasks(cfg: ExperimentConfig) -> Dict[str, Task]:
  """Builds the enabled tasks (registry order).

  Raises:
    ConfigError: no task is enabled.
  """
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)
  if not tasks:
    raise ConfigError('tasks: no task is enabled (set tasks.<name>.enabled=true)')
  return tasks


def prepare(cfg: ExperimentConfig, tasks: Optional[Dict[str, Task]] = None) -> Prepared:
  """Builds the tasks (unless given), resolves every task's data source and reads one batch of each.

  Tasks whose `data.source` is empty read the synthetic world (generated on first use).
  Reading a batch here turns a missing path, an empty glob or a malformed record
  into an error now, on the coordinator, before any server is started; the batch is
  kept as the trainer's sample (`Prepared.samples`), so it is read once per process.

  Args:
    cfg: the validated config.
    tasks: `enabled_tasks(cfg)`, when the caller has built them already.

  Raises:
    ConfigError: no task is enabled.
    DataError: a task's data cannot be read (the message names the source).
  """
  from mtssl_tf.data.images import ReadOptions
  from mtssl_tf.data.synthetic.world import default_world_dir, make_world

  tasks = enabled_tasks(cfg) if tasks is None else tasks
  world = None
  if any(not t.config.data.source for t in tasks.values()):
    world = make_world(cfg.train.world_dir or default_world_dir(cfg.train.world_preset), cfg.train.world_preset)
  sources, samples = {}, {}
  for name, task in tasks.items():
    sources[name] = task.config.data.source or task.world_source(world['sources'])
    options = ReadOptions(data_dir=task.config.data.data_dir or None)
    try:
      samples[name] = next(iter(task.dataset(options, sources[name], seed=0)))
    except StopIteration:
      raise DataError(f'tasks.{name}: {sources[name]} holds no readable example') from None
  return Prepared(tasks, sources, world, samples)


def check_cluster(
  cfg: ExperimentConfig, cluster_spec: Dict[str, List[str]], tasks: Optional[Dict[str, Task]] = None
) -> None:
  """The cluster must have one worker per configured pool seat and the configured PS count.

  Args:
    cfg: the validated config.
    cluster_spec: job name -> addresses.
    tasks: the enabled tasks, when the caller has built them already.

  Raises:
    ConfigError: naming the keys whose counts disagree with the cluster.
  """
  tasks = enabled_tasks(cfg) if tasks is None else tasks
  pools = {n: t.config.workers for n, t in tasks.items()}
  workers = len(cluster_spec.get('worker', []))
  if sum(pools.values()) != workers:
    seats = ' + '.join(f'tasks.{n}.workers={w}' for n, w in pools.items())
    raise ConfigError(f'worker pools do not add up: {seats} = {sum(pools.values())}, but the cluster has {workers}')
  if len(cluster_spec.get('ps', [])) < 1:
    raise ConfigError('the cluster has no parameter server (job "ps")')


def run_coordinator(cfg: ExperimentConfig, model_dir: str, resolver, prepared: Prepared) -> Dict[str, dict]:
  """Trains to `train.total_steps` under ParameterServerStrategy and writes sample images."""
  from mtssl_tf.train.distributed import DistributedTrainer

  trainer = DistributedTrainer(cfg, model_dir, resolver, prepared.sources, prepared=prepared)
  result = trainer.run()
  trainer.write_image_summaries(sum(r['steps'] for r in result.values()))
  return result


def coordinator_main(
  cfg: ExperimentConfig, model_dir: str, cluster_spec: Dict[str, List[str]], prepared: Optional[Prepared] = None
) -> int:
  """Entry of a coordinator process: trains, returns its exit code (see `EXIT_CLUSTER_FAILURE`).

  Args:
    cfg: the validated config.
    model_dir: the run.
    cluster_spec: job name -> addresses.
    prepared: what `prepare(cfg)` built in this process (None: prepare here).
  """
  import tensorflow as tf

  from mtssl_tf.distribute.cluster import resolver_for

  # TF's INFO lines on connecting to and stopping the cluster (and absl's dump of the session
  # config, remote.py) describe TF's internals between the user's progress lines; TF warnings still show.
  tf.get_logger().setLevel('WARNING')
  logging.get_absl_logger().addFilter(lambda record: not record.getMessage().startswith('default session config:'))
  prepared = prepare(cfg) if prepared is None else prepared
  marker = os.path.join(model_dir, CLUSTER_FAILURE_MARKER)
  if os.path.exists(marker):
    os.remove(marker)  # An earlier attempt's; this attempt has not failed.
  try:
    result = run_coordinator(cfg, model_dir, resolver_for(cluster_spec), prepared)
  except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as e:
    first_line = str(e).splitlines()[0] if str(e) else ''
    with open(marker, 'w', encoding='utf-8') as f:
      json.dump({'error': type(e).__name__, 'message': first_line, 'time': time.time()}, f)
    logging.error('cluster failure (%s): %s', type(e).__name__, first_line)
    return EXIT_CLUSTER_FAILURE
  with open(os.path.join(model_dir, 'train_result.json'), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  return 0


def supervise_local(
  cfg: ExperimentConfig,
  model_dir: str,
  config_argv: Sequence[str],
  max_restarts: int = 3,
  on_cluster=None,
  private_network: str = 'auto',
  tasks: Optional[Dict[str, Task]] = None,
) -> Dict[str, dict]:
  """Trains on a cluster of local subprocesses, restarting after cluster failures.

  Args:
    cfg: the validated config (for pool sizes and PS count).
    model_dir: run directory.
    config_argv: the `--config`/`--override` flags that reproduce `cfg` in the child.
    max_restarts: coordinator restarts allowed after cluster failures.
    on_cluster: optional callback(LocalCluster, coordinator Popen) called after each
      start (tests use it to inject faults).
    private_network: 'auto' runs servers and coordinator in a private network namespace
      where possible, else logs one warning line (they listen on all interfaces); 'on'
      fails if that is impossible; 'off' never isolates (and warns).
    tasks: the enabled tasks, when the caller has built them (`Prepared.tasks`).

  Returns:
    The per-task steps and updates the coordinator wrote to `train_result.json`.

  Raises:
    RuntimeError: the coordinator failed for another reason, or too many restarts.
    PrivateNetworkError: private_network='on' and isolation is impossible here.
  """
  from mtssl_tf.configs.base import to_plain
  from mtssl_tf.distribute.cluster import LocalCluster
  from mtssl_tf.distribute.private_net import open_private_network

  tasks = enabled_tasks(cfg) if tasks is None else tasks
  num_workers = sum(t.config.workers for t in tasks.values())
  logs = os.path.join(model_dir, 'logs')
  # A remote model_dir or data source (gs://...) needs the network the namespace lacks.
  locations = [model_dir, os.environ.get('TFDS_DATA_DIR', ''), *_strings(to_plain(cfg))]
  network = open_private_network(private_network, locations)
  cluster = None
  try:
    cluster = LocalCluster(num_workers, cfg.train.num_ps, log_dir=logs, network=network)
    for attempt in range(max_restarts + 1):
      cmd = [sys.executable, '-m', 'mtssl_tf.bin.train', f'--model_dir={model_dir}', '--export=false',
             f'--cluster_spec={json.dumps(cluster.spec)}', *config_argv]  # fmt: skip
      if network:
        cmd = network.command(cmd)
      start = time.time()
      child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      # The coordinator's progress lines reach the console and coordinator.log.
      pump = threading.Thread(target=_tee, args=(child.stdout, os.path.join(logs, 'coordinator.log')), daemon=True)
      pump.start()
      if on_cluster:
        on_cluster(cluster, child)
      code = _wait(child)
      pump.join(timeout=10)
      if code == 0:
        with open(os.path.join(model_dir, 'train_result.json'), encoding='utf-8') as f:
          return json.load(f)
      if code != EXIT_CLUSTER_FAILURE and not _aborted_after_cluster_failure(code, model_dir):
        raise RuntimeError(f'coordinator exited with code {code}; see {logs}/coordinator.log')
      logging.warning(
        'cluster failure after %.0f s (attempt %d of %d); restarting servers, resuming from the last checkpoint',
        time.time() - start, attempt + 1, max_restarts + 1,
      )  # fmt: skip
      cluster.restart_all()
    raise RuntimeError(f'the cluster failed {max_restarts + 1} times; giving up (logs in {logs})')
  finally:
    if cluster:
      cluster.stop()
    if network:
      network.close()


def _aborted_after_cluster_failure(code: int, model_dir: str) -> bool:
  """Whether the coordinator died by a signal after catching a cluster failure (a restartable failure).

  TF's C++ runtime can abort while a coordinator handles a lost server (TF 2.20: "terminate called after
  throwing ...", SIGABRT), before the process can exit with `EXIT_CLUSTER_FAILURE`; the coordinator wrote
  `CLUSTER_FAILURE_MARKER` first (`coordinator_main` removes an earlier attempt's when it starts).
  """
  return code < 0 and os.path.exists(os.path.join(model_dir, CLUSTER_FAILURE_MARKER))


def _strings(value) -> List[str]:
  """Every string in a plain config (nested dicts and lists)."""
  if isinstance(value, dict):
    return [s for v in value.values() for s in _strings(v)]
  if isinstance(value, (list, tuple)):
    return [s for v in value for s in _strings(v)]
  return [value] if isinstance(value, str) else []


def _tee(stream, path: str) -> None:
  with open(path, 'ab') as log:
    for line in iter(stream.readline, b''):
      log.write(line)
      if not _NOISE.search(line):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def _wait(child: subprocess.Popen) -> int:
  try:
    return child.wait()
  except KeyboardInterrupt:
    child.kill()
    child.wait()
    raise


def export_latest(
  cfg: ExperimentConfig,
  model_dir: str,
  export_dir: str = '',
  preprocessing: str = 'rgb',
  tasks: Optional[Dict[str, Task]] = None,
  image_size: int = 0,
) -> str:
  """Exports the latest checkpoint of a run as a SavedModel (no cluster, no task data needed).

  Only the trunk and lasso are exported, so only their variables are created (from a blank
  image) and restored; the heads are left unbuilt and no task reads its data, so a run
  whose data or synthetic world is gone still exports.

  Args:
    cfg: the run's config.
    model_dir: the run (its checkpoints/).
    export_dir: where to write; '' is `<model_dir>/saved_model`.
    preprocessing: what the SavedModel feeds the trunk (`EXPORT_INPUTS`, as evaluation/backbone.py's `EVAL_INPUTS`):
      'rgb' colour, the paper's for every trunk (Doersch §3.3 evaluates harmonized trunks on
      colour); 'harmonized' grey; 'as_trained' grey only if every task was harmonized.
    tasks: the enabled tasks, when the caller has built them (`Prepared.tasks`).
    image_size: side of the images the signatures take; 0: any (ResNet-v2) or the network's
      own (AlexNet 227 / 64 px, VGG16 224 px: they need a static size).

  Returns:
    The SavedModel directory (default `<model_dir>/saved_model`).

  Raises:
    FileNotFoundError: the run has no checkpoint.
    ValueError: an unknown `preprocessing`.
  """
  import tensorflow as tf

  from mtssl_tf.export.saved_model import export
  from mtssl_tf.tasks.multitask import MultiTaskModel

  if preprocessing not in EXPORT_INPUTS:
    raise ValueError(f'export preprocessing: must be one of {EXPORT_INPUTS}, got {preprocessing!r}')
  checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, 'checkpoints'))
  if not checkpoint:
    raise FileNotFoundError(f'no checkpoint under {model_dir}/checkpoints to export')
  tasks = enabled_tasks(cfg) if tasks is None else tasks
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso, cfg.runtime.precision)
  model.build_shared()
  tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
  if preprocessing == 'as_trained':
    preprocessing = 'harmonized' if all(t.harmonized_input for t in tasks.values()) else 'rgb'
  export_dir = export_dir or os.path.join(model_dir, 'saved_model')
  export(model, export_dir, preprocessing, cfg.trunk.output_stride, image_size)
  return export_dir


def write_run_config(cfg: ExperimentConfig, model_dir: str) -> str:
  """Writes the resolved config next to the run's outputs."""
  return save_config(cfg, model_dir)
