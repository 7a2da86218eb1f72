"""The local cluster's TensorFlow servers are unreachable from other hosts.

TensorFlow's gRPC server listens on every interface and runs any graph it is sent, so
the local launcher runs servers and coordinator in a network namespace that has only
`lo` (mtssl_tf/distribute/private_net.py). The listener test starts `mtssl-train` the
way a user does and reads each process's listening sockets and interfaces from /proc.
"""

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

from mtssl_tf.configs import override, save_config, validate_all
from mtssl_tf.distribute import private_net
from mtssl_tf.distribute.private_net import (
  PrivateNetwork,
  PrivateNetworkError,
  exposed,
  interfaces,
  open_private_network,
  parse_proc_net_tcp,
  plan,
  remote_locations,
  socket_inodes,
  sockets_of,
)
from mtssl_tf.train.experiment import ExperimentConfig

# x86-64 is little-endian: the kernel prints each 32-bit address word as a host-order integer.
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 20 4 30 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr
   0: 00000000000000000000000000000000:CDA3 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0
   2: 0000000000000000FFFF00000100007F:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6666 1 0
"""  # noqa: E501 (the kernel's line format)


def test_parse_proc_net_tcp_decodes_addresses_ports_states_and_inodes():
  rows = parse_proc_net_tcp(TCP)
  assert [(str(s.address), s.port, s.listening, s.inode) for s in rows] == [
    ('127.0.0.1', 8080, True, 1111),
    ('0.0.0.0', 22, True, 2222),
    ('127.0.0.1', 8080, False, 3333),
  ]
  rows6 = parse_proc_net_tcp(TCP6)
  expected = [('::', 52643), ('::1', 80), ('::ffff:127.0.0.1', 81)]
  assert [(s.address, s.port) for s in rows6] == [(ipaddress.ip_address(a), p) for a, p in expected]
  assert [s.loopback for s in rows + rows6] == [True, False, True, False, True, True]
  with pytest.raises(ValueError, match='not a /proc/net/tcp line'):
    parse_proc_net_tcp('header\n   0: 0100007F 00000000:0000 0A\n')


def test_parse_reads_this_process_listener():
  import socket

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    s.listen()
    port = s.getsockname()[1]
    mine = [x for x in sockets_of() if x.inode in socket_inodes()]
  assert [(str(x.address), x.port, x.listening) for x in mine] == [('127.0.0.1', port, True)]


def test_exposed_means_a_non_loopback_listener_in_a_namespace_with_more_than_lo():
  rows = parse_proc_net_tcp(TCP) + parse_proc_net_tcp(TCP6)
  assert exposed(rows, ['lo']) == []
  assert [(str(s.address), s.port) for s in exposed(rows, ['lo', 'eth0'])] == [('0.0.0.0', 22), ('::', 52643)]


def test_remote_locations_and_the_auto_decision():
  assert remote_locations(['/runs/a', 'folder:/photos', 'file:///x', 'tfds:imagenet2012:train', 'subsample']) == []
  remote = ['gs://bucket/run', 'tfrecord:gs://b/train-*', 's3://b/x', 'hdfs://nn/x']
  assert remote_locations(remote) == remote
  assert plan('auto', ['/runs/a'], platform='linux') == (True, '')
  isolate, reason = plan('auto', ['/runs/a', 'tfrecord:gs://b/train-*'], platform='linux')
  assert not isolate and 'tfrecord:gs://b/train-*' in reason
  assert plan('auto', [], platform='darwin') == (False, 'network namespaces need Linux, this is darwin')
  assert plan('off', [], platform='linux') == (False, 'private_network=off')
  with pytest.raises(PrivateNetworkError, match='private_network=on, but gs://bucket/run needs the network'):
    plan('on', ['gs://bucket/run'], platform='linux')
  with pytest.raises(PrivateNetworkError, match='need Linux'):
    plan('on', [], platform='darwin')
  with pytest.raises(ValueError, match='private_network: must be one of'):
    plan('yes')


def test_a_remote_model_dir_runs_without_isolation_after_one_warning():
  lines = []
  assert open_private_network('auto', ['gs://bucket/run'], log=lambda fmt, *a: lines.append(fmt % a)) is None
  assert len(lines) == 1 and 'listen on all network interfaces' in lines[0] and 'gs://bucket/run' in lines[0]


def test_config_strings_reach_the_decision():
  from mtssl_tf.configs.base import to_plain
  from mtssl_tf.train.launch import _strings

  cfg = ExperimentConfig()
  cfg.tasks.exemplar.data.source = 'tfrecord:gs://bucket/train-*'
  assert remote_locations(_strings(to_plain(cfg))) == ['tfrecord:gs://bucket/train-*']


def _available(user_namespace=False):
  try:
    PrivateNetwork(user_namespace).close()
  except PrivateNetworkError as e:
    return str(e)
  return ''


_PROBE = (
  'import os, socket\n'
  'from mtssl_tf.distribute.private_net import interfaces\n'
  'with socket.socket() as s, socket.socket() as c:\n'
  '  s.bind(("127.0.0.1", 0)); s.listen(); c.connect(s.getsockname())\n'  # lo is up.
  'print(os.stat("/proc/self/ns/net").st_ino, ",".join(interfaces()), os.getuid())\n'
)


@pytest.mark.parametrize('user_namespace', [False, True], ids=['net', 'user+net'])
def test_commands_run_in_a_namespace_with_only_a_working_lo(user_namespace):
  if sys.platform != 'linux' or (user_namespace and os.geteuid() != 0):
    pytest.skip('Linux; the user+net variant is forced as root (non-root always gets it)')
  reason = _available(user_namespace)
  if reason:
    pytest.skip(f'network namespaces are not available here: {reason}')
  with PrivateNetwork(user_namespace) as network:
    out = subprocess.run(network.command([sys.executable, '-c', _PROBE]), capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  inode, names, uid = out.stdout.split()
  assert int(inode) == network.inode != os.stat('/proc/self/ns/net').st_ino
  assert names == 'lo' and int(uid) == os.getuid()  # The same user, no root inside.


def test_join_refuses_a_process_that_does_not_hold_the_namespace(capsys):
  # This process's own namespace: nothing to enter, but not the expected inode.
  assert private_net.main(['join', str(os.getpid()), '1', '--', 'true']) == 1
  assert 'no longer holds the private network namespace' in capsys.readouterr().err


def _children(pid):
  """Every descendant of `pid` (from the ppid field of /proc/*/stat)."""
  parents = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat', encoding='ascii', errors='replace') as f:
          parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):  # Exited meanwhile.
        continue
  found, frontier = [], [pid]
  while frontier:
    frontier = [p for p, parent in parents.items() if parent in frontier]
    found += frontier
  return found


def _cmdline(pid):
  with open(f'/proc/{pid}/cmdline', 'rb') as f:
    return f.read().replace(b'\0', b' ').decode()


def test_local_cluster_listens_only_inside_a_private_network(tmp_path):
  if sys.platform != 'linux':
    pytest.skip('reads /proc')
  reason = _available()
  if reason:
    pytest.skip(f'network namespaces are not available here: {reason}')
  cfg = ExperimentConfig()
  override(cfg, {
    'trunk': {'units_per_block': [1, 1, 2], 'width': 8},
    'tasks': {'relative_position': dict(enabled=True, batch_size=2, patch_size=16, gap=4, jitter=1, min_area=4096,
                                        max_area=4096, min_downsample=4, hidden_units=8)},
    # Runs until killed: the check happens while it trains.
    'train': dict(total_steps=10**6, world_preset='tiny', world_dir=str(tmp_path / 'world'), log_every_seconds=1.0,
                  checkpoint_every_seconds=1e6, cost_tick=1e9),
  })  # fmt: skip
  validate_all(cfg)
  config = save_config(cfg, str(tmp_path), 'input.yaml')
  model_dir = tmp_path / 'run'
  # As a user runs it; 'on' makes the run fail rather than warn if it cannot isolate.
  cmd = [sys.executable, '-m', 'mtssl_tf.bin.train', f'--config={config}', f'--model_dir={model_dir}',
         '--export=false', '--private_network=on']  # fmt: skip
  output = tmp_path / 'supervisor.log'
  with open(output, 'wb') as out:  # New session: the whole tree is killed by its group id at the end.
    supervisor = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    deadline = time.time() + 300
    log = model_dir / 'logs' / 'coordinator.log'
    # A progress line: the servers serve and the coordinator trains (all its listeners are up).
    while not (log.exists() and ' steps/s' in log.read_text(errors='replace')):
      assert supervisor.poll() is None, output.read_text(errors='replace')[-3000:]
      assert time.time() < deadline, 'no progress line within 300 s'
      time.sleep(0.5)
    processes = {pid: _cmdline(pid) for pid in [supervisor.pid, *_children(supervisor.pid)]}
    servers = [p for p, c in processes.items() if 'mtssl_tf.bin.server' in c]
    coordinator = [p for p, c in processes.items() if '--cluster_spec=' in c and 'mtssl_tf.bin.train' in c]
    assert len(servers) == 2 and len(coordinator) == 1, processes
    mine = os.stat('/proc/self/ns/net').st_ino
    listeners = 0
    for pid, command in processes.items():
      owned = socket_inodes(pid)
      sockets = [s for s in sockets_of(pid) if s.listening and s.inode in owned]
      listeners += len(sockets)
      assert exposed(sockets, interfaces(pid)) == [], (command, sockets, interfaces(pid))
    for pid in servers + coordinator:
      assert os.stat(f'/proc/{pid}/ns/net').st_ino != mine, processes[pid]
      assert interfaces(pid) == ['lo']
    assert listeners >= 2  # The check saw the servers' sockets (each server listens).
  finally:
    os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
