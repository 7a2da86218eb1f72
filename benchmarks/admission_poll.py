"""What waiting workers' admission polls cost the parameter server (mtssl_tf/train/admission.py).

A closure whose task's open update is full polls the task's counter on a parameter server
every `admission.POLL_SECONDS` (2 ms) until the coordinator re-opens it: one small remote
read per poll. At paper scale (Doersch & Zisserman 2017: 4 tasks x 16 workers, K_t = 16)
up to ~60 workers can wait at once, ~30,000 polls/s to a parameter server. This measures
what such polls cost the parameter server, on this machine:

* One parameter server as its own process (`LocalCluster`, `python -m mtssl_tf.bin.server`),
  so its CPU time can be read from /proc/<pid>/stat (utime + stime) apart from the client's.
* On it, through `tf.config.experimental_connect_to_cluster`, a `RoundGate` with one task (its
  counter, created as the trainer creates it) and a float32 "weights" variable
  (`--weights_floats`, default 4M = 16 MB).
* P pollers (`--pollers`), threads of the client, each one call of its own `tf.function`
  (own kernels: a tf.data nap kernel runs one nap at a time) running the waiting loop of
  `RoundGate.admit`: `_nap(POLL_SECONDS)`, `counter.read_value()`, a fresh claim if the epoch
  moved on, until told to stop; each loop iteration also counts itself in a client-side
  variable, so the polls in a window are counted exactly. The gate is full throughout, so
  every iteration is a poll.
* While they run: (a) the parameter server's CPU seconds per wall second over a window
  with nothing else going on, and its CPU microseconds per poll (net of the same server
  idle, P = 0); (b) the latency of the coordinator's update: `weights.assign_add(delta)`
  with a 16 MB delta sent from the client, then the counter's re-open (`RoundGate.reopen`,
  a control dependency, as in the trainer), over `--updates` repetitions, median and p90,
  and the re-open alone (one small remote write). P = 0 runs first and again last: the
  baseline of the ratios, measured in the same run.
* Where a poll's cost goes (`--breakdown_iterations`): one poller, no other, timing parts of
  the loop: an eager read from Python, a loop of reads, with the claim's `tf.cond`, with the
  nap. The loop is partitioned between the client (nap, loop control, the cond's predicate)
  and the parameter server (read, claim), so each iteration exchanges tensors both ways.
* An extrapolation: parameter-server cores that `--paper_polls` polls/s (30,000) would take
  at the measured CPU per poll, and the same for longer poll intervals (60 waiting workers).

The parameter server, and the client (whose own gRPC server TensorFlow starts), run in a
private network namespace with only `lo` (`mtssl_tf/distribute/private_net.py`): TF 2.15's
server listens on 0.0.0.0 whatever the cluster spec names, so the namespace is what keeps it
on loopback. The benchmark refuses to run where no namespace can be made.

    .venv/bin/python benchmarks/admission_poll.py                       # ~1.5-2 min on 2 cores
    .venv/bin/python benchmarks/admission_poll.py --pollers=0,16,64,128 --window=8
    .venv/bin/python benchmarks/admission_poll.py --weights_floats=27000000   # ~108 MB update

Pollers, client and parameter server share this machine's cores: on a loaded 2-core
machine the pollers reach fewer polls/s than P / POLL_SECONDS (each iteration is a nap plus
a round trip), which the table shows next to the nominal rate. The update latencies then
include the client's share of the cores too, not only the parameter server's queue. The
"Failed to remove function remotely" lines at exit are harmless: the parameter server is
stopped before the client's functions are released.
"""

import os
import signal
import subprocess
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from mtssl_tf import hardware  # noqa: E402
from mtssl_tf.distribute import private_net  # noqa: E402
from mtssl_tf.distribute.cluster import MIN_INTER_OP_THREADS, LocalCluster  # noqa: E402
from mtssl_tf.train import admission  # noqa: E402

MEASURE_FLAGS = (
  'pollers',
  'weights_floats',
  'window',
  'ramp',
  'updates',
  'paper_polls',
  'baseline_after',
  'breakdown_iterations',
)
flags.DEFINE_list('pollers', ['0', '8', '32', '64'], 'Concurrent pollers P to measure (0: the baseline).')
flags.DEFINE_integer('weights_floats', 4 * 1024 * 1024, 'float32 weights on the parameter server (4M = 16 MB).')
flags.DEFINE_float('window', 6.0, 'Seconds of the CPU window per P (pollers only, nothing else running).')
flags.DEFINE_float('ramp', 1.5, 'Seconds between starting the pollers and the CPU window.')
flags.DEFINE_integer('updates', 12, 'Timed coordinator updates per P (after one untimed).')
flags.DEFINE_integer('paper_polls', 30000, 'Polls/s to extrapolate to (paper scale: ~60 waiting workers / 2 ms).')
flags.DEFINE_boolean('baseline_after', True, 'Measure P = 0 again after the others (the drift of the baseline).')
flags.DEFINE_integer(
  'breakdown_iterations', 500, 'Iterations per part of the poll loop timed with one poller at the end (0: skip).'
)
flags.DEFINE_boolean('child', False, 'Internal: measure here (inside the private network namespace).')
FLAGS = flags.FLAGS

CLIENT_CPU = '/job:localhost/replica:0/task:0/device:CPU:0'
PS = '/job:ps/task:0/device:CPU:0'
MAX_POLL_SECONDS = 600.0  # A poller stops by itself after this long (if the client never sets its stop flag).
PAPER_WAITERS = 60  # Paper scale: up to ~60 of 4 x 16 workers waiting at once.


def _cpu_seconds(pid='self'):
  """utime + stime of process `pid`, all threads, in seconds (/proc/<pid>/stat fields 14-15)."""
  with open(f'/proc/{pid}/stat', encoding='ascii') as f:
    fields = f.read().rsplit(')', 1)[1].split()  # After the command name, which may hold spaces.
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _make_poller(gate, stop, done):
  """One poller's function: `RoundGate.admit`'s waiting loop, until `stop` is set; returns (polls, seconds)."""
  counter, task = gate.counters[0], 0

  @tf.function
  def poll_loop():
    start = tf.timestamp()
    first = counter.read_value()

    def waiting(x, n):
      del x, n
      return tf.logical_and(tf.equal(stop.read_value(), 0), tf.timestamp() - start < MAX_POLL_SECONDS)

    def poll(x, n):
      # The body of admit()'s `poll`, as it is: nap, read the counter, claim again if the epoch moved on.
      with tf.control_dependencies([admission._nap(admission.POLL_SECONDS)]):
        current = counter.read_value()
      x = tf.cond(current // admission.EPOCH > x // admission.EPOCH, lambda: gate._claim(task), lambda: x)
      with tf.control_dependencies([x]):
        counted = done.assign_add(1)
      with tf.control_dependencies([counted]):
        return tf.identity(x), n + 1

    _, polls = tf.while_loop(waiting, poll, [first, tf.constant(0, tf.int64)])
    return polls, tf.timestamp() - start

  return poll_loop


BREAKDOWN = (
  ('eager read: counter.read_value().numpy() from Python', None),
  ('loop of reads (no nap)', ('read',)),
  ('loop of reads + the claim cond (no nap)', ('read', 'cond')),
  ('loop of nap + read', ('nap', 'read')),
  ("loop of nap + read + the claim cond (admit()'s poll)", ('nap', 'read', 'cond')),
)


def breakdown(gate, ps_pid, iterations):
  """One poller, no stop flag: PS CPU per iteration of parts of the poll loop; returns [(name, it/s, us/it)]."""
  counter = gate.counters[0]

  def make(parts):
    @tf.function
    def loop(n):
      def body(x, i):
        naps = [admission._nap(admission.POLL_SECONDS)] if 'nap' in parts else []
        with tf.control_dependencies(naps):
          current = counter.read_value()
        if 'cond' in parts:
          current = tf.cond(current // admission.EPOCH > x // admission.EPOCH, lambda: gate._claim(0), lambda: x)
        return current, i + 1

      return tf.while_loop(lambda x, i: i < n, body, [counter.read_value(), tf.constant(0, tf.int64)])[1]

    return lambda n: loop(tf.constant(n, tf.int64)).numpy()

  def eager(n):
    for _ in range(n):
      counter.read_value().numpy()

  rows = []
  for name, parts in BREAKDOWN:
    run = eager if parts is None else make(parts)
    run(10)  # Trace, instantiate.
    cpu0, wall0 = _cpu_seconds(ps_pid), time.perf_counter()
    run(iterations)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds(ps_pid) - cpu0
    rows.append((name, iterations / wall, cpu / iterations * 1e6))
  return rows


def _percentile(values, q):
  return float(np.percentile(np.asarray(values), q))


def measure(pollers, delta, update, reopen, stop, done, functions, ps_pid):
  """One P: starts P pollers, measures the PS's CPU over a window, then times updates; returns a dict."""
  stop.assign(0)
  errors = []

  def run(i):
    try:
      functions[i]()  # Until `stop` is set; the window's polls are counted in `done`.
    except Exception as e:  # noqa: BLE001 (re-raised in the main thread)
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(pollers)]
  try:
    for t in threads:
      t.start()
    time.sleep(FLAGS.ramp if pollers else 0.2)
    polls0, ps0, client0, wall0 = int(done.numpy()), _cpu_seconds(ps_pid), _cpu_seconds(), time.perf_counter()
    time.sleep(FLAGS.window)
    polls1, ps1, client1, wall1 = int(done.numpy()), _cpu_seconds(ps_pid), _cpu_seconds(), time.perf_counter()
    wall = wall1 - wall0
    update_ms, reopen_ms = [], []
    for _ in range(FLAGS.updates):
      time.sleep(0.05)
      start = time.perf_counter()
      update(delta).numpy()
      update_ms.append(1e3 * (time.perf_counter() - start))
      time.sleep(0.05)
      start = time.perf_counter()
      reopen().numpy()
      reopen_ms.append(1e3 * (time.perf_counter() - start))
  finally:
    stop.assign(1)
    for t in threads:
      t.join(timeout=60)
  if errors:
    raise errors[0]
  if any(t.is_alive() for t in threads):
    raise RuntimeError('a poller did not stop within 60 s of its stop flag')
  return dict(
    pollers=pollers,
    polls_per_s=(polls1 - polls0) / wall,
    ps_cpu=(ps1 - ps0) / wall,
    client_cpu=(client1 - client0) / wall,
    update_ms=update_ms,
    reopen_ms=reopen_ms,
  )


def child():
  cluster = None
  try:
    # Only loopback: this process and everything it starts are in a namespace with only `lo`.
    tf.get_logger().setLevel('ERROR')  # Not the retracing warning: each poller is its own tf.function on purpose.
    names = private_net.interfaces()
    if names != ['lo']:
      raise RuntimeError(f'not in a private network namespace (interfaces: {names})')
    cluster = LocalCluster(num_workers=0, num_ps=1)
    ps_process = cluster.processes['ps:0']
    listeners = private_net.sockets_of(ps_process.pid)
    if private_net.exposed(listeners, private_net.interfaces(ps_process.pid)):
      raise RuntimeError('the parameter server is reachable from outside the loopback interface')
    print(f'parameter server {cluster.spec["ps"][0]}, pid {ps_process.pid}, in a network namespace with only lo')
    tf.config.threading.set_inter_op_parallelism_threads(max(MIN_INTER_OP_THREADS, os.cpu_count() or 1))
    spec = {'ps': cluster.spec['ps']}
    tf.config.experimental_connect_to_cluster(tf.train.ClusterSpec(spec), job_name='localhost', protocol='grpc')

    with tf.device(PS):
      gate = admission.RoundGate([1], num_slots=1, timeout_seconds=MAX_POLL_SECONDS, name='poll_gate')
      weights = tf.Variable(tf.zeros([FLAGS.weights_floats], tf.float32), name='weights')
    with tf.device(CLIENT_CPU):
      stop = tf.Variable(tf.constant(0, tf.int32), trainable=False, name='stop')
      done = tf.Variable(tf.constant(0, tf.int64), trainable=False, name='polls_done')
      delta = tf.fill([FLAGS.weights_floats], tf.constant(1e-6, tf.float32))
    counter = gate.counters[0]
    # The gate's one place is taken: the round is full, every poller waits (and polls) until stopped.
    counter.assign(admission.BIAS + 1)

    @tf.function
    def update(d):
      # The coordinator's update of a task (weights first, then the re-open, in one function).
      applied = weights.assign_add(d)
      with tf.control_dependencies([applied]):
        reopened = gate.reopen(0)
      with tf.control_dependencies([reopened]):
        return counter.read_value()

    @tf.function
    def reopen():
      with tf.control_dependencies([gate.reopen(0)]):
        return counter.read_value()

    counts = [int(p) for p in FLAGS.pollers]
    order = counts + ([0] if FLAGS.baseline_after and counts and counts[0] == 0 else [])
    start = time.perf_counter()
    functions = [_make_poller(gate, stop, done) for _ in range(max(counts))]
    stop.assign(1)
    for f in functions:  # Trace and instantiate each (on the PS too) outside the timed windows.
      f()
    update(delta).numpy()
    reopen().numpy()
    print(f'{len(functions)} poller functions traced and instantiated in {time.perf_counter() - start:.1f} s')

    rows = []
    for p in order:
      row = measure(p, delta, update, reopen, stop, done, functions, ps_process.pid)
      print(
        f'  P={p}: {row["polls_per_s"]:.0f} polls/s, PS {row["ps_cpu"]:.3f} CPU s/s, '
        f'update median {np.median(row["update_ms"]):.1f} ms',
        flush=True,
      )
      rows.append(row)
    parts = breakdown(gate, ps_process.pid, FLAGS.breakdown_iterations) if FLAGS.breakdown_iterations else []
    report(rows, parts)
  finally:
    if cluster:
      cluster.stop()


def report(rows, parts):
  base = [r for r in rows if r['pollers'] == 0]
  idle_cpu = float(np.mean([r['ps_cpu'] for r in base])) if base else 0.0
  base_update = np.median(sum((r['update_ms'] for r in base), [])) if base else float('nan')
  base_reopen = np.median(sum((r['reopen_ms'] for r in base), [])) if base else float('nan')
  mb = FLAGS.weights_floats * 4 / 1e6
  print()
  print(f'CPU: {hardware.describe_cpu()}')
  print(
    f'POLL_SECONDS = {admission.POLL_SECONDS * 1e3:g} ms; weights {FLAGS.weights_floats} float32 ({mb:.1f} MB); '
    f'CPU window {FLAGS.window:g} s per P; {FLAGS.updates} updates per P'
  )
  print(f'PS idle (P = 0): {idle_cpu:.4f} CPU s/s')
  header = (
    '| P | nominal polls/s | polls/s | PS CPU s/s | PS us/poll (net of idle) | client CPU s/s '
    '| update median / p90 ms | ratio to P = 0 | re-open median / p90 ms | ratio |'
  )
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  per_poll = []
  for r in rows:
    p = r['pollers']
    nominal = p / admission.POLL_SECONDS
    us = (r['ps_cpu'] - idle_cpu) / r['polls_per_s'] * 1e6 if r['polls_per_s'] > 0 else float('nan')
    if p:
      per_poll.append((r['polls_per_s'], us, p))
    um, u90 = np.median(r['update_ms']), _percentile(r['update_ms'], 90)
    rm, r90 = np.median(r['reopen_ms']), _percentile(r['reopen_ms'], 90)
    print(
      f'| {p} | {nominal:.0f} | {r["polls_per_s"]:.0f} | {r["ps_cpu"]:.3f} | '
      f'{"-" if not p else f"{us:.0f}"} | {r["client_cpu"]:.3f} | {um:.1f} / {u90:.1f} | {um / base_update:.2f} | '
      f'{rm:.2f} / {r90:.2f} | {rm / base_reopen:.2f} |'
    )
  if parts:
    print()
    print(f'One poller, {FLAGS.breakdown_iterations} iterations per line, no other pollers:')
    print('| loop | iterations/s | PS CPU us per iteration |')
    print('|---|---|---|')
    for name, rate, us_per in parts:
      print(f'| {name} | {rate:.0f} | {us_per:.0f} |')
  if not per_poll:
    return
  polls, us, busiest = max(per_poll)  # The most polls/s: the most reliable CPU per poll.
  single = parts[-1][2] if parts else None  # admit()'s poll, one poller.
  print()
  print(f'Extrapolation from this machine to {FLAGS.paper_polls} polls/s (PS CPU per poll x polls/s):')
  print(f'  at {us:.0f} us per poll (P = {busiest}, net of idle): {us * 1e-6 * FLAGS.paper_polls:.1f} PS cores')
  if single is not None:
    print(
      f"  at {single:.0f} us per poll (one poller, admit()'s poll): {single * 1e-6 * FLAGS.paper_polls:.1f} PS cores"
    )
  print(f'{PAPER_WAITERS} waiting workers, per poll interval (polls/s at most {PAPER_WAITERS} / interval):')
  print(
    '| poll interval | polls/s at most | PS cores (concurrent cost) | PS cores (one-poller cost) | mean added wait |'
  )
  print('|---|---|---|---|---|')
  for seconds in (admission.POLL_SECONDS, 0.005, 0.01, 0.02, 0.05):
    rate = PAPER_WAITERS / seconds
    one = f'{rate * single * 1e-6:.1f}' if single is not None else '-'
    print(f'| {seconds * 1e3:g} ms | {rate:.0f} | {rate * us * 1e-6:.1f} | {one} | ~{seconds * 1e3 / 2:g} ms |')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.child:
    child()
    return
  # TF 2.15's servers listen on every interface: run the PS and the client in a namespace with only `lo`.
  network = private_net.open_private_network('on')
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # Run the finally below.
  argv = [sys.executable, os.path.abspath(__file__), '--child']
  for name in MEASURE_FLAGS:
    value = FLAGS[name].value
    argv.append(f'--{name}={",".join(value) if isinstance(value, list) else value}')
  try:
    process = subprocess.Popen(network.command(argv))
    try:
      code = process.wait()
    finally:
      if process.poll() is None:  # Interrupted: SIGTERM lets the child's LocalCluster kill the PS process.
        process.terminate()
        try:
          process.wait(timeout=20)
        except subprocess.TimeoutExpired:
          process.kill()
          process.wait()
  finally:
    network.close()
  if code:
    raise SystemExit(f'measurement failed (exit code {code})')


if __name__ == '__main__':
  app.run(main)
