"""Cluster plumbing: a server process per PS/worker, and a local launcher for one machine.

On a real cluster every machine runs `mtssl-train` with its `TF_CONFIG`; ps and worker
tasks only start a `tf.distribute.Server` and wait (see `run_server`), the chief runs
the coordinator. On one machine `LocalCluster` starts those servers as subprocesses
on free ports (the cluster spec names 127.0.0.1) and tears them down on exit, Ctrl-C
or SIGTERM.

TensorFlow's server listens on 0.0.0.0:<port> whatever host the spec names (TF 2.15
has no bind-address option), accepts anyone and runs any graph it receives. Given a
`PrivateNetwork` (mtssl_tf/distribute/private_net.py), `LocalCluster` starts its
servers in that namespace, which has only `lo`, so no other host can reach them; the
local launcher does this by default. Without one they are reachable on every interface.

Every server gets at least 4 inter-op threads: with the default on a 2-core machine
(2 threads), a worker could block on a remote variable read while the PS's only
threads wait on it, and ClusterCoordinator.join() hung (measured; more threads fixed it).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

import tensorflow as tf
from absl import logging

from mtssl_tf.distribute.private_net import PrivateNetwork, sockets_of

MIN_INTER_OP_THREADS = 4


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def server_config() -> tf.compat.v1.ConfigProto:
  """Session config for servers (see the module docstring for the thread count)."""
  config = tf.compat.v1.ConfigProto()
  config.inter_op_parallelism_threads = max(MIN_INTER_OP_THREADS, os.cpu_count() or 1)
  return config


def run_server(cluster_spec: Dict[str, List[str]], job: str, index: int) -> None:
  """Starts a server for (job, index) and blocks forever (the process is killed to stop it)."""
  server = tf.distribute.Server(
    tf.train.ClusterSpec(cluster_spec), job_name=job, task_index=index, protocol='grpc', config=server_config()
  )
  logging.info('%s %d serving at %s', job, index, server.target)
  server.join()


def resolver_for(cluster_spec: Dict[str, List[str]]) -> tf.distribute.cluster_resolver.ClusterResolver:
  """A coordinator's resolver for a {'worker': [...], 'ps': [...]} spec."""
  return tf.distribute.cluster_resolver.SimpleClusterResolver(tf.train.ClusterSpec(cluster_spec), rpc_layer='grpc')


class LocalCluster:
  """PS and worker servers as subprocesses on this machine."""

  def __init__(
    self,
    num_workers: int,
    num_ps: int = 1,
    log_dir: Optional[str] = None,
    network: Optional[PrivateNetwork] = None,
  ):
    """Starts the servers.

    Args:
      num_workers: worker processes.
      num_ps: parameter server processes.
      log_dir: where each server's stdout/stderr goes (default: discarded).
      network: a private network namespace to run the servers in (the caller owns it and
        must start its coordinator there too, with `network.command`); None: this
        process's network, where the servers listen on every interface.
    """
    self.network = network
    self.spec = {
      'worker': [f'127.0.0.1:{free_port()}' for _ in range(num_workers)],
      'ps': [f'127.0.0.1:{free_port()}' for _ in range(num_ps)],
    }
    self.log_dir = log_dir
    self.processes: Dict[str, subprocess.Popen] = {}
    for job, addresses in self.spec.items():
      for index in range(len(addresses)):
        self.start(job, index)
    atexit.register(self.stop)
    for sig in (signal.SIGTERM,):
      previous = signal.getsignal(sig)

      def handler(signum, frame, previous=previous):
        self.stop()
        if callable(previous):
          previous(signum, frame)
        raise SystemExit(128 + signum)

      signal.signal(sig, handler)
    self._wait_until_listening()

  def start(self, job: str, index: int) -> subprocess.Popen:
    """(Re)starts one server process on its port."""
    if self.log_dir:
      os.makedirs(self.log_dir, exist_ok=True)
      out = open(os.path.join(self.log_dir, f'{job}_{index}.log'), 'ab')  # noqa: SIM115 (owned by the process)
    else:
      out = subprocess.DEVNULL
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2'))
    env.pop('TF_CONFIG', None)
    cmd = [sys.executable, '-m', 'mtssl_tf.bin.server', f'--cluster_spec={json.dumps(self.spec)}',
           f'--job={job}', f'--index={index}']  # fmt: skip
    if self.network:
      cmd = self.network.command(cmd)
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    self.processes[f'{job}:{index}'] = process
    return process

  def kill(self, job: str, index: int) -> None:
    """SIGKILLs one server (fault tests)."""
    process = self.processes[f'{job}:{index}']
    process.kill()
    process.wait()

  def _wait_until_listening(self, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    for name, address in ((f'{j}:{i}', a) for j, addrs in self.spec.items() for i, a in enumerate(addrs)):
      host, port = address.rsplit(':', 1)
      while True:
        process = self.processes[name]
        if process.poll() is not None:
          raise RuntimeError(f'server {name} exited with code {process.returncode} while starting')
        if self._listening(process.pid, host, int(port)):
          break
        if time.time() > deadline:
          raise TimeoutError(f'server {name} did not listen on {address} within {timeout:.0f} s')
        time.sleep(0.2)

  def _listening(self, pid: int, host: str, port: int) -> bool:
    if self.network:
      # This process is outside the servers' namespace: read the socket table of the
      # server's namespace, once the server has joined it.
      try:
        joined = os.stat(f'/proc/{pid}/ns/net').st_ino == self.network.inode
        return joined and any(s.listening and s.port == port for s in sockets_of(pid))
      except OSError:  # Still exec'ing into the namespace, or just exited.
        return False
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return True
    except OSError:
      return False

  def resolver(self) -> tf.distribute.cluster_resolver.ClusterResolver:
    """A cluster resolver for a coordinator of this cluster."""
    return resolver_for(self.spec)

  def restart_all(self) -> None:
    """Kills and restarts every server on its port (after a parameter server failure)."""
    self.stop()
    for job, addresses in self.spec.items():
      for index in range(len(addresses)):
        self.start(job, index)
    self._wait_until_listening()

  def stop(self) -> None:
    """Kills every server process (idempotent)."""
    for process in self.processes.values():
      if process.poll() is None:
        process.kill()
    for process in self.processes.values():
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        pass
