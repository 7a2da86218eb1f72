"""A private network namespace for the local cluster, so other hosts cannot reach its servers.

TensorFlow's gRPC server (`tf.distribute.Server`, TF 2.15) listens on 0.0.0.0:<port>
whatever host the cluster spec names (it has no bind-address option), accepts anyone
and runs any graph it is sent, file reads and writes included. On Linux the local
launcher therefore runs its servers and its coordinator in a network namespace that
has only a loopback interface: they talk to each other over 127.0.0.1 in there, and
nothing outside (other hosts, or this host's own interfaces) can connect to them.

How, without a setuid helper:
* A holder process (`python -m mtssl_tf.distribute.private_net hold`) creates the
  namespace with unshare(2): CLONE_NEWNET as root; otherwise CLONE_NEWUSER|CLONE_NEWNET,
  mapping the user's own uid and gid (so files keep their owners). An unprivileged
  user can only do this in a single-threaded process, which a fresh interpreter that
  has not imported numpy or TensorFlow still is. It brings `lo` up, reports, and waits
  until its stdin closes (its owner exited or called `close`).
* Each server and the coordinator start as `python -m mtssl_tf.distribute.private_net
  join <holder pid> <netns inode> -- cmd...`: a fresh single-threaded interpreter that
  setns(2)es into the holder's namespaces, checks that it got the holder's namespace
  and that it has no interface but `lo`, and execs `cmd` (same pid, so the caller's
  Popen handle, kill and wait act on the real process).
The calling process stays where it is: a library call should not move its caller (a
test process, a supervisor whose TensorFlow threads already exist) to another network.

Where this cannot be done (not Linux, namespaces refused, a remote model_dir or data
source that needs the network, or the user turned it off) `open_private_network` logs
one warning line and the servers listen on all interfaces as before.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import ipaddress
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from typing import Iterable, List, Optional, Sequence, Tuple, Union

MODULE = 'mtssl_tf.distribute.private_net'
MODES = ('auto', 'on', 'off')
WARNING = (
  "the local cluster's TensorFlow servers listen on all network interfaces and run any graph sent to them, "
  'unauthenticated (no private network: %s); while the run is up, firewall their ports from other hosts, or keep '
  'model_dir and data local on Linux so that they run in a private network namespace (private_network=auto|on)'
)

# <linux/sched.h>, <linux/sockios.h>, <linux/if.h>.
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ_SIZE = 40  # sizeof(struct ifreq) on 64-bit Linux: 16-byte name + 24-byte union.
TCP_LISTEN = 0x0A  # TCP_LISTEN in the `st` column of /proc/net/tcp (include/net/tcp_states.h).

# A URL scheme (gs://, s3://, hdfs://, http://...) anywhere in a path or a source spec
# such as `tfrecord:gs://bucket/train-*`; file:// is local.
_REMOTE = re.compile(r'(?<![A-Za-z0-9+.-])(?!file://)[A-Za-z][A-Za-z0-9+.-]*://')


class PrivateNetworkError(RuntimeError):
  """A private network namespace cannot be created or joined here (the message says why)."""


Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclasses.dataclass(frozen=True)
class Socket:
  """One row of /proc/<pid>/net/tcp or tcp6."""

  address: Address
  port: int
  state: int
  inode: int

  @property
  def listening(self) -> bool:
    return self.state == TCP_LISTEN

  @property
  def loopback(self) -> bool:
    """Bound to a loopback address (127/8, ::1, or ::ffff:127.x.x.x)."""
    mapped = getattr(self.address, 'ipv4_mapped', None)
    return (mapped or self.address).is_loopback


def _decode_address(text: str) -> Address:
  # The kernel prints each 32-bit word of the address as a host-order integer (%08X).
  words = [int(text[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(text), 8)]
  raw = b''.join(words)
  return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def parse_proc_net_tcp(text: str) -> List[Socket]:
  """Parses the text of /proc/net/tcp or /proc/net/tcp6 (a header line, then one socket per line).

  Raises:
    ValueError: a line does not have the kernel's format (quoted in the message).
  """
  sockets = []
  for line in text.splitlines()[1:]:
    fields = line.split()
    if not fields:
      continue
    try:
      address, port = fields[1].split(':')
      sockets.append(Socket(_decode_address(address), int(port, 16), int(fields[3], 16), int(fields[9])))
    except (IndexError, ValueError) as e:
      raise ValueError(f'not a /proc/net/tcp line ({e}): {line!r}') from None
  return sockets


def sockets_of(pid: Union[int, str] = 'self') -> List[Socket]:
  """Every TCP socket (IPv4 and IPv6) of the network namespace process `pid` is in."""
  result = []
  for name in ('tcp', 'tcp6'):
    try:
      with open(f'/proc/{pid}/net/{name}', encoding='ascii') as f:
        result += parse_proc_net_tcp(f.read())
    except FileNotFoundError:  # No IPv6 in this kernel.
      if name == 'tcp':
        raise
  return result


def socket_inodes(pid: Union[int, str] = 'self') -> set:
  """Inodes of the sockets process `pid` has open (its /proc/<pid>/fd links `socket:[N]`)."""
  inodes = set()
  for fd in os.listdir(f'/proc/{pid}/fd'):
    try:
      link = os.readlink(f'/proc/{pid}/fd/{fd}')
    except OSError:  # Closed since listdir.
      continue
    if link.startswith('socket:['):
      inodes.add(int(link[8:-1]))
  return inodes


def interfaces(pid: Union[int, str] = 'self') -> List[str]:
  """Network interfaces of the namespace process `pid` is in (from /proc/<pid>/net/dev)."""
  with open(f'/proc/{pid}/net/dev', encoding='ascii') as f:
    return [line.split(':', 1)[0].strip() for line in f.read().splitlines()[2:] if ':' in line]


def exposed(listeners: Iterable[Socket], names: Sequence[str]) -> List[Socket]:
  """The listening sockets another host could reach: not loopback-bound, in a namespace with more than `lo`."""
  if all(name == 'lo' for name in names):
    return []
  return [s for s in listeners if s.listening and not s.loopback]


def remote_locations(locations: Iterable[str]) -> List[str]:
  """The paths/source specs among `locations` that name a remote filesystem (gs://, s3://, hdfs://, http://...)."""
  return [x for x in locations if isinstance(x, str) and _REMOTE.search(x)]


def plan(mode: str, locations: Iterable[str] = (), platform: str = sys.platform) -> Tuple[bool, str]:
  """Whether to isolate the local cluster, and if not, why.

  Args:
    mode: 'auto' (isolate where possible), 'on' (isolate or fail), 'off'.
    locations: the run's paths and data sources; a remote one needs the network.
    platform: `sys.platform` (a parameter for tests).

  Returns:
    (isolate, reason): reason says why not, for the warning.

  Raises:
    ValueError: `mode` is not one of MODES.
    PrivateNetworkError: mode 'on' and isolation is impossible.
  """
  if mode not in MODES:
    raise ValueError(f'private_network: must be one of {MODES}, got {mode!r}')
  if mode == 'off':
    return False, 'private_network=off'
  remote = remote_locations(locations)
  reason = ''
  if remote:
    reason = f'{remote[0]} needs the network'
  elif not platform.startswith('linux'):
    reason = f'network namespaces need Linux, this is {platform}'
  if reason and mode == 'on':
    raise PrivateNetworkError(f'private_network=on, but {reason}')
  return not reason, reason


class PrivateNetwork:
  """A private network namespace (only `lo`), held open by a helper process until `close`."""

  def __init__(self, user_namespace: bool = False):
    """Starts the holder and waits for its namespace.

    Args:
      user_namespace: create a user namespace too even as root (what an unprivileged
        user always gets; lets a root CI test that path).

    Raises:
      PrivateNetworkError: the namespace could not be created (the message says why).
    """
    self._holder = subprocess.Popen(
      [sys.executable, '-m', MODULE, 'hold', *(['--user'] if user_namespace else [])],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
    )
    line = self._holder.stdout.readline().strip()
    if line != 'ready':
      self.close()
      raise PrivateNetworkError(line.removeprefix('error: ') or f'holder exited with code {self._holder.returncode}')
    self.pid = self._holder.pid
    self.inode = os.stat(f'/proc/{self.pid}/ns/net').st_ino

  def command(self, cmd: Sequence[str]) -> List[str]:
    """`cmd` run inside this namespace (exec'd: it keeps the pid of the process Popen starts)."""
    return [sys.executable, '-m', MODULE, 'join', str(self.pid), str(self.inode), '--', *cmd]

  def close(self) -> None:
    """Lets the holder exit (idempotent); the namespace lives on while processes inside it do."""
    self._holder.stdin.close()  # EOF: the holder's signal to exit.
    try:
      self._holder.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._holder.kill()
      self._holder.wait()
    self._holder.stdout.close()

  def __enter__(self) -> PrivateNetwork:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_private_network(mode: str, locations: Iterable[str] = (), log=None) -> Optional[PrivateNetwork]:
  """A private network for a local cluster, or None after one warning line saying why not.

  Args:
    mode: 'auto', 'on' or 'off' (see `plan`).
    locations: the run's paths and data sources (a remote one needs the network).
    log: warning function (default absl's logging.warning).

  Raises:
    ValueError: unknown mode.
    PrivateNetworkError: mode 'on' and isolation is impossible.
  """
  isolate, reason = plan(mode, locations)
  if isolate:
    try:
      return PrivateNetwork()
    except PrivateNetworkError as e:
      if mode == 'on':
        raise PrivateNetworkError(f'private_network=on, but {e}') from None
      reason = str(e)
  if log is None:
    from absl import logging

    log = logging.warning
  log(WARNING, reason)
  return None


# ---- Inside the helper processes (fresh, single-threaded interpreters). ----


def _libc_call(name: str, *args) -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  if getattr(libc, name)(*args) != 0:
    code = ctypes.get_errno()
    raise OSError(code, f'{name}: {os.strerror(code)}')


def _write(path: str, text: str) -> None:
  with open(path, 'w', encoding='ascii') as f:
    f.write(text)


def _loopback_up() -> None:
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack('16s', b'lo').ljust(IFREQ_SIZE, b'\0')
    flags = struct.unpack_from('H', fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request), 16)[0]
    fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack('16sH', b'lo', flags | IFF_UP).ljust(IFREQ_SIZE, b'\0'))


def create_namespace(user_namespace: bool = False) -> str:
  """Moves this (single-threaded) process into a new network namespace with `lo` up.

  Args:
    user_namespace: create a user namespace too even as root.

  Returns:
    'net' (root: a network namespace) or 'user+net' (a user namespace too).

  Raises:
    PrivateNetworkError: the kernel refused (the message names the step and errno).
  """
  uid, gid = os.geteuid(), os.getegid()
  kind = 'net'
  try:
    try:
      if uid != 0 or user_namespace:
        raise PermissionError(errno.EPERM, 'not root')
      _libc_call('unshare', CLONE_NEWNET)
    except PermissionError:  # Unprivileged, or root without CAP_SYS_ADMIN (a container).
      kind = 'user+net'
      _libc_call('unshare', CLONE_NEWUSER | CLONE_NEWNET)
      # Map our own ids (not root): files keep their owners, the servers get no privileges.
      _write('/proc/self/setgroups', 'deny')
      _write('/proc/self/uid_map', f'{uid} {uid} 1')
      _write('/proc/self/gid_map', f'{gid} {gid} 1')
    _loopback_up()
  except OSError as e:
    raise PrivateNetworkError(f'cannot create a network namespace ({kind}): {e}') from None
  return kind


def _hold(user_namespace: bool) -> int:
  try:
    create_namespace(user_namespace)
  except PrivateNetworkError as e:
    print(f'error: {e}', flush=True)
    return 1
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the owner; it closes our stdin.
  print('ready', flush=True)
  sys.stdin.buffer.read()  # Returns at EOF: the owner closed the pipe or exited.
  return 0


def _join(pid: str, inode: str, cmd: List[str]) -> int:
  try:
    for ns, flag in (('user', CLONE_NEWUSER), ('net', CLONE_NEWNET)):
      target = f'/proc/{pid}/ns/{ns}'
      if os.stat(target).st_ino == os.stat(f'/proc/self/ns/{ns}').st_ino:
        continue  # Root's holder has no user namespace of its own.
      fd = os.open(target, os.O_RDONLY)
      try:
        _libc_call('setns', fd, flag)
      finally:
        os.close(fd)
  except OSError as e:
    print(f'private_net: cannot join the namespaces of process {pid}: {e}', file=sys.stderr)
    return 1
  # The holder's pid could have been reused by another process: check what we joined.
  if os.stat('/proc/self/ns/net').st_ino != int(inode) or interfaces() != ['lo']:
    print(f'private_net: process {pid} no longer holds the private network namespace', file=sys.stderr)
    return 1
  os.execvp(cmd[0], cmd)
  return 1  # Not reached: execvp replaces this process or raises.


def main(argv: Sequence[str]) -> int:
  """`hold [--user]` or `join PID NETNS_INODE -- CMD...` (see the module docstring)."""
  if argv and argv[0] == 'hold' and argv[1:] in ([], ['--user']):
    return _hold(argv[1:] == ['--user'])
  if len(argv) >= 5 and argv[0] == 'join' and argv[3] == '--':
    return _join(argv[1], argv[2], list(argv[4:]))
  print(f'usage: python -m {MODULE} hold [--user] | join PID NETNS_INODE -- CMD...', file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
