"""Permutation sets of the jigsaw task: the authors' published sets and a generator.

A jigsaw label k names a permutation perm[k] of the 9 tiles, numbered row-major
(cell = 3 * row + col); output slot i holds source tile perm[k][i], i.e.
`out[i] = tiles[perm[k][i]]` (the convention of MehdiNoroozi/JigsawPuzzleSolver).

The set decides how hard and how well posed the task is (Noroozi & Favaro 2016, §3.2):
permutations far apart in Hamming distance are easy to tell apart, and for Jigsaw++
(Noroozi et al. 2018, §4), where up to two tiles come from another image, a minimum
pairwise distance of 3 keeps the solution unique. The shipped sets (see
`mtssl_tf/assets/jigsaw/PROVENANCE.md`) are the authors' own: 'noroozi701', the
Jigsaw++ set (minimum distance 3), and 'noroozi100', the original Jigsaw's
maximal-distance set of 100 (minimum distance 2).
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np

NUM_TILES = 9
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets', 'jigsaw')
SHIPPED_SETS = {'noroozi701': 'permutations_701.npy', 'noroozi100': 'permutations_100_max.npy'}
SHIPPED_SIZES = {'noroozi701': 701, 'noroozi100': 100}
GENERATED = 'generated'
METHODS = ('maximal', 'random')


def load_permutations(name: str = 'noroozi701') -> np.ndarray:
  """A shipped permutation set as int32 [n, 9], 0-indexed.

  Args:
    name: 'noroozi701' (Jigsaw++, the default) or 'noroozi100' (original Jigsaw).

  Raises:
    ValueError: an unknown set name.
  """
  if name not in SHIPPED_SETS:
    raise ValueError(f'unknown permutation set {name!r}; shipped: {sorted(SHIPPED_SETS)}')
  return np.load(os.path.join(ASSET_DIR, SHIPPED_SETS[name])).astype(np.int32)


@functools.lru_cache(maxsize=1)
def _all_permutations(k: int) -> np.ndarray:
  return np.array(list(itertools.permutations(range(k))), np.uint8)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
  """Pairwise Hamming distances (positions that differ) of [n, k] permutations, [n, n]."""
  perms = np.asarray(perms)
  return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def min_hamming_distance(perms: np.ndarray) -> int:
  """The smallest Hamming distance between two different rows of `perms`."""
  distances = hamming_distances(perms)
  return int(distances[~np.eye(len(distances), dtype=bool)].min())


def generate_permutations(n: int, min_hamming: int = 3, seed: int = 0, method: str = 'maximal') -> np.ndarray:
  """Greedily selects `n` permutations of 9 tiles, any two at least `min_hamming` apart.

  Distances are kept for all 9! = 362880 candidates and updated with one vectorised
  pass per selection, so n = 701 takes about a second.

  Args:
    n: number of permutations.
    min_hamming: required minimum pairwise Hamming distance (1-9).
    seed: the first permutation and every tie are drawn from this seed; the same
      arguments always give the same set.
    method: 'maximal': each new permutation is one farthest from its nearest chosen
      one (Noroozi & Favaro 2016 select by maximal Hamming distance; they use the
      average distance, which does not bound the minimum, this uses the minimum);
      'random': a random candidate at least `min_hamming` from all chosen ones.

  Returns:
    int32 [n, 9], 0-indexed, row order = selection order.

  Raises:
    ValueError: bad arguments, or no candidate left at distance `min_hamming`.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  if not 1 <= min_hamming <= NUM_TILES or n < 1:
    raise ValueError(f'need n >= 1 and 1 <= min_hamming <= {NUM_TILES}, got n={n}, min_hamming={min_hamming}')
  candidates = _all_permutations(NUM_TILES)
  columns = [np.ascontiguousarray(candidates[:, j]) for j in range(NUM_TILES)]
  rng = np.random.default_rng(seed)
  nearest = np.full(len(candidates), NUM_TILES, np.int8)  # Distance to the nearest chosen permutation.
  chosen = []
  same = np.empty(len(candidates), np.int8)
  for _ in range(n):
    if method == 'maximal':
      pool = np.flatnonzero(nearest == nearest.max())
    else:
      pool = np.flatnonzero(nearest >= min_hamming)
    if pool.size == 0 or nearest[pool[0]] < min_hamming:
      raise ValueError(f'only {len(chosen)} permutations are {min_hamming} apart with method {method!r}; asked for {n}')
    index = pool[rng.integers(pool.size)]
    chosen.append(index)
    same.fill(0)
    for j in range(NUM_TILES):
      same += columns[j] == candidates[index, j]
    np.minimum(nearest, NUM_TILES - same, out=nearest)
  return candidates[chosen].astype(np.int32)


@functools.lru_cache(maxsize=8)
def _generated(n: int, min_hamming: int, seed: int) -> np.ndarray:
  return generate_permutations(n, min_hamming, seed)


def get_permutations(name: str, num: int, min_hamming: int = 3, seed: int = 0) -> np.ndarray:
  """The permutation set a jigsaw config names, int32 [num, 9].

  Args:
    name: a shipped set (its first `num` rows are used; a subset keeps its minimum
      distance) or 'generated' (`generate_permutations(num, min_hamming, seed)`).
    num: number of permutations (classes).
    min_hamming: minimum distance of a generated set (ignored for shipped sets).
    seed: seed of a generated set.

  Raises:
    ValueError: an unknown name or more permutations than a shipped set has.
  """
  if name == GENERATED:
    return _generated(num, min_hamming, seed).copy()
  perms = load_permutations(name)
  if not 1 <= num <= len(perms):
    raise ValueError(f'the {name} set has {len(perms)} permutations, asked for {num}')
  return perms[:num]
