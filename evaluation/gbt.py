"""Exact, fast re-implementation of scikit-learn's GradientBoostingClassifier.

DCI fits one GradientBoostingClassifier() with default parameters per factor.
fit() builds the same model -- the same trees split for split, the same leaf
values, hence the same decision_function and predictions -- as scikit-learn
1.9.1 with the same random_state, for

    loss='log_loss', n_estimators, learning_rate, max_depth (defaults 100, 0.1, 3),
    subsample=1, min_samples_split=2, min_samples_leaf=1, max_features=None,
    min_impurity_decrease=0, init=None (class prior), no sample weights,

on finite dense X; feature_importances_ agree to ~1e-15 (usually bit for bit).
On DCI's 10,000 x 10 codes (factors with 3 to 40 classes) it takes ~1.6 ms
per tree on one core, sklearn 26-30 ms.  tests/test_gbt.py checks it against sklearn.

The algorithm (Friedman's gradient boosting, as scikit-learn runs it)
-----------------------------------------------------------------------
raw (n, K) starts at the link of the class prior.  Each stage computes the
negative gradient g of the loss at raw (HalfMultinomialLoss for K >= 3
classes, K trees per stage; HalfBinomialLoss for K = 2, one tree), fits one
regression tree per class to it (squared error, best splits, depth 3),
replaces each leaf's value by a Newton step mean(g) / mean(p (1 - p)) (times
(K-1)/K for K >= 3) and adds learning_rate * leaf value to raw.  predict =
argmax of raw (raw >= 0 for K = 2).

Why exact means replaying sklearn's arithmetic
----------------------------------------------
sklearn's tree builder visits nodes depth first.  At each node it draws the
features in a random order (Fisher-Yates with its xorshift generator, seeded
by random_state.randint per tree), sorts the node's samples by each, and keeps
the first split position whose proxy sum_l**2/n_l + sum_r**2/n_r is strictly
larger than the best so far.  Exact ties between proxies are common in
boosting (samples share gradient values; two features can cut off the same
samples), so which split wins depends on the draw order and on the last bits
of the sums -- on the order in which sklearn adds them up.  We replay:

* the random stream, the draws and the constant-feature bookkeeping
  (_draw_features);
* each sum in sklearn's order: sum_left along the sorted feature (or back
  from sum_total when update() finds that shorter), node sums in the order of
  sklearn's `samples` array, which after a node's search is sorted by the
  last drawn feature and then partitioned in place (_partition_final); where
  a feature has equal values, their order is whatever sklearn's introsort
  makes of its input (_sklearn_order runs that introsort on the ranges that
  hold them);
* the impurity formulas, and numpy's pairwise summation for the leaf means.

Equal values only need that replay when they belong to different samples.
Samples with equal rows and equal labels (DCI draws images with replacement,
so a few percent repeat) have equal gradients in every tree, so any order
among them gives the same sums and the same sorts: they form one class
(Data.cls) and their ties are ignored.

Why it is fast
--------------
* X never changes: each feature is argsorted once.  A node's samples sorted by
  a feature are a segment of these arrays, kept sorted by stable partitions.
* A division-free prescan scores every split position; only features that may
  hold the best split (within rigorous rounding margins) get sklearn's exact
  scan.  The root prescan of all K trees of a stage is one pass.
* The root's sorts are memoised (same samples, same starting order).
* Replaying sorts of tied values is the costly part, and it rarely changes a
  decision.  The last SPEC_LEVELS (3) levels of splits -- every level of
  DCI's trees -- therefore run speculatively: ties in the presorted order,
  decisions certified against bounds on what the true orders could change,
  pair by pair where one margin for all is too coarse (_certify_pairs), and
  redone exactly when a decision is within the bound, after replaying the
  path's orders from the deepest ancestor whose order is known
  (_restore_path).  A node's order is known when its parent's last sort left
  no run of tied values of unknown order among its samples, whatever the
  parent's own order was (_children_known).
  Impurities may then be summed in another order than sklearn's: importances
  agree to ~1e-15 instead of bit for bit.
* Numba kernels (compiled once, cached in __pycache__) that release the GIL,
  so fits run in parallel threads; fit(n_threads=t) splits each stage's trees.

Tie-breaking: given random_state, the model is that of
GradientBoostingClassifier(random_state=random_state), ties included.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import scipy.special
import scipy.stats
from numba import njit

RAND_R_MAX = 2147483647  # sklearn's xorshift returns values modulo RAND_R_MAX + 1
FEATURE_THRESHOLD = np.float32(1e-7)  # sklearn: values closer than this (float32) are not split between
EPSILON = np.finfo(np.float64).eps  # sklearn: impurity <= EPSILON is a pure node
TREE_LEAF = -1
PRUNE_MARGIN = 1e-13  # relative margin of the division-free prescan (its error is < 1e-15)


# --------------------------------------------------------------------------
# sklearn's small helpers, ported operation for operation


@njit(cache=True, nogil=True)
def _rand_int(state, low, high):
    """sklearn.tree._utils.rand_int: low + xorshift32(state) % (high - low).
    state is a (1,) int64 array holding the uint32 generator state."""
    s = state[0]
    if s == 0:
        s = 1
    s ^= (s << 13) & 0xFFFFFFFF
    s ^= s >> 17
    s ^= (s << 5) & 0xFFFFFFFF
    state[0] = s
    return low + (s % (RAND_R_MAX + 1)) % (high - low)


@njit(cache=True, nogil=True)
def _pairwise_sum(a, lo, n):
    """numpy's pairwise summation of a[lo:lo+n] (np.add.reduce on a contiguous
    float64 array), so that leaf means equal np.mean bit for bit."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        while i < n - n % 8:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, lo, n2) + _pairwise_sum(a, lo + n2, n - n2)


@njit(cache=True, nogil=True)
def _copy(dst, src, a, b):
    """dst[a:b] = src[a:b] (a loop: cheaper to compile than numpy slicing)."""
    for i in range(a, b):
        dst[i] = src[i]


@njit(cache=True, nogil=True)
def _sift_down(v, lo, start, end):
    root = start
    while True:
        child = root * 2 + 1
        maxind = root
        if child < end and v[lo + maxind] >> 32 < v[lo + child] >> 32:
            maxind = child
        if child + 1 < end and v[lo + maxind] >> 32 < v[lo + child + 1] >> 32:
            maxind = child + 1
        if maxind == root:
            return
        v[lo + root], v[lo + maxind] = v[lo + maxind], v[lo + root]
        root = maxind


@njit(cache=True, nogil=True)
def _median3(a, b, c):
    """sklearn's median3 (Bentley and McIlroy)."""
    if a < b:
        if b < c:
            return b
        return c if a < c else a
    if b < c:
        return a if a < c else c
    return b


@njit(cache=True, nogil=True)
def _introsort(v, lo, n, tied, stack):
    """sklearn.utils._sorting.simultaneous_sort(use_three_way_partition=True)
    step for step, on v[lo:lo+n] = key << 32 | sample (compared by key), but
    only where it matters: a sub-range without any tied key (tied[key]) is
    left unsorted, since its sorted order is known.  The order among equal
    keys in the output is whatever sklearn's introsort makes of its input,
    hence the exact port.  Left-side recursion goes on an explicit stack (the
    ranges are disjoint, so the processing order does not change the result)."""
    if n == 0:
        return
    stack[0], stack[1], stack[2] = lo, n, 2 * int(math.log2(n))
    top = 3
    while top > 0:
        top -= 3
        lo, n, maxd = stack[top], stack[top + 1], stack[top + 2]
        while n > 15:
            if maxd <= 0:  # "gone quadratic": heapsort this range
                start = (n - 2) // 2
                while True:
                    _sift_down(v, lo, start, n)
                    if start == 0:
                        break
                    start -= 1
                for end in range(n - 1, 0, -1):
                    v[lo], v[lo + end] = v[lo + end], v[lo]
                    _sift_down(v, lo, 0, end)
                n = 0
                break
            maxd -= 1
            pivot = _median3(v[lo] >> 32, v[lo + n // 2] >> 32, v[lo + n - 1] >> 32)
            below, above = pivot << 32, (pivot << 32) | 0xFFFFFFFF  # packed bounds of the pivot key
            i = lt = 0
            r = n
            tied_lt = tied_gt = 0
            while i < r:
                x = v[lo + i]
                if x < below:
                    tied_lt += tied[x >> 32]
                    v[lo + i], v[lo + lt] = v[lo + lt], x
                    i += 1
                    lt += 1
                elif x > above:
                    tied_gt += tied[x >> 32]
                    r -= 1
                    v[lo + i], v[lo + r] = v[lo + r], x
                else:
                    i += 1
            if tied_lt > 0:  # left side, sorted later
                stack[top], stack[top + 1], stack[top + 2] = lo, lt, maxd
                top += 3
            lo += r
            n = n - r if tied_gt > 0 else 0
        for i in range(1, n):  # insertion sort of the small remainder
            t = v[lo + i]
            j = i
            while j > 0 and v[lo + j - 1] >> 32 > t >> 32:
                v[lo + j] = v[lo + j - 1]
                j -= 1
            v[lo + j] = t


@njit(cache=True, nogil=True)
def _sklearn_order(rank, canon, src, start, end, ties, n_ties, out, packed, gpos, tied, stack):
    """out[start:end] = src[start:end] sorted the way sklearn's introsort sorts
    it by one feature.  rank (n,): each sample's rank of value in that feature
    (equal values, equal rank); canon[start:end]: the same samples sorted with
    ties in any order; ties[:n_ties]: the positions p in canon whose value
    equals that at p - 1, in runs that hold more than one class (_find_ties);
    other runs keep canon's order, which is as good.  Samples with a unique value take their place in
    canon; only the order inside groups of equal values comes from the
    (partial) introsort.  tied (n,): zeros, used as scratch."""
    for j in range(n_ties):  # flag the tied ranks, note where their groups start
        r = rank[canon[ties[j]]]
        if not tied[r]:
            tied[r] = 1
            gpos[r] = ties[j] - 1
    for q in range(start, end):
        packed[q] = (np.int64(rank[src[q]]) << 32) | src[q]
    _introsort(packed, start, end - start, tied, stack)
    _copy(out, canon, start, end)
    for q in range(start, end):
        r = packed[q] >> 32
        if tied[r]:
            out[gpos[r]] = packed[q] & 0xFFFFFFFF
            gpos[r] += 1
    for j in range(n_ties):
        tied[rank[canon[ties[j]]]] = 0


# --------------------------------------------------------------------------
# Split search of one node (BestSplitter.node_split).  Shapes: n samples, d
# features; data: a Data, ws: a Workspace (see the Public API section).


@njit(cache=True, nogil=True)
def _draw_features(features, const_features, n_known, state, seg, xt, start, end, vis_f, vis_const):
    """The Fisher-Yates loop of sklearn's node_split_best with max_features =
    n_features: the features whose samples sklearn sorts, in its order, into
    vis_f[:nv] (vis_const: found constant in this node, i.e. its range is
    <= FEATURE_THRESHOLD).  Updates features / const_features / state exactly
    as sklearn does.  Returns (nv, number of constant features for children)."""
    d = features.shape[0]
    f_i = d
    n_visited = n_found = n_drawn = 0
    n_total = n_known
    nv = 0
    while f_i > n_total and (n_visited < d or n_visited <= n_found + n_drawn):
        n_visited += 1
        f_j = _rand_int(state, n_drawn, f_i - n_found)
        if f_j < n_known:  # a known constant: skipped, not sorted
            features[n_drawn], features[f_j] = features[f_j], features[n_drawn]
            n_drawn += 1
            continue
        f_j += n_found
        f = features[f_j]
        # Sorted segment: its ends are the node's min and max of feature f.
        constant = xt[f, seg[f, end - 1]] <= xt[f, seg[f, start]] + FEATURE_THRESHOLD
        vis_f[nv] = f
        vis_const[nv] = constant
        nv += 1
        if constant:
            features[f_j], features[n_total] = features[n_total], features[f_j]
            n_found += 1
            n_total += 1
            continue
        f_i -= 1
        features[f_i], features[f_j] = features[f_j], features[f_i]
    for i in range(n_known):  # sklearn's invariant for siblings and children
        features[i] = const_features[i]
    for i in range(n_known, n_known + n_found):
        const_features[i] = features[i]
    return nv, n_total


@njit(cache=True, nogil=True)
def _prescan(row, xf, cls, g, start, end, st, inv, ties):
    """Division-free pass over one feature's sorted segment row[start:end]:
    the best score a = sl*sl*inv[n_l] + sr*sr*inv[n_r] over the split
    positions (sklearn's next_p: between values more than FEATURE_THRESHOLD
    apart), which is within 4 ulp of sklearn's proxy sl*sl/n_l + sr*sr/n_r
    since sl is the same running sum.  Also where the segment holds equal
    values that matter (ties[:n_ties], see _find_ties) and whether sklearn's update() would
    recompute sum_left from the right end at some position (rev).  Returns
    (best a, -1 without split positions; n_ties; rev)."""
    sl = 0.0
    s = row[start]
    xprev = xf[s]
    sl += g[s]
    amax = -1.0
    n_skip = 0
    for p in range(start + 1, end):
        s = row[p]
        x = xf[s]
        if x > xprev + FEATURE_THRESHOLD:
            sr = st - sl
            amax = max(amax, sl * sl * inv[p - start] + sr * sr * inv[end - p])
        else:  # not a split position (rare): noted in ties, sorted out below
            ties[n_skip] = p
            n_skip += 1
        sl += g[s]
        xprev = x
    # rev: after a run of skipped positions a..b, update() moves from a - 1 to
    # b + 1 and walks from the right end when that is shorter.
    rev = False
    i = 0
    while i < n_skip:
        j = i
        while j + 1 < n_skip and ties[j + 1] == ties[j] + 1:
            j += 1
        p = ties[j] + 1
        rev = rev or (p < end and p - (ties[i] - 1) > end - p)
        i = j + 1
    n_ties = 0  # keep the skipped positions that hold equal values
    for i in range(n_skip):
        p = ties[i]
        if xf[row[p]] == xf[row[p - 1]]:
            ties[n_ties] = p
            n_ties += 1
    return amax, _keep_mixed(row, cls, ties, n_ties), rev


@njit(cache=True, nogil=True)
def _prescan_root(row, xf, gb, st, inv, sl, top):
    """_prescan's best score of one feature at the root for a batch of B
    trees at once: gb (n, B) holds their gradients, st (B,) their sums; the
    sorted order and the split positions are shared.  -> top (B,)."""
    B = gb.shape[1]
    end = row.shape[0]
    s = row[0]
    xprev = xf[s]
    for b in range(B):
        sl[b] = 0.0
        sl[b] += gb[s, b]
        top[b] = -1.0
    for p in range(1, end):
        s = row[p]
        x = xf[s]
        if x > xprev + FEATURE_THRESHOLD:
            il, ir = inv[p], inv[end - p]
            for b in range(B):
                a = sl[b]
                sr = st[b] - a
                score = a * a * il + sr * sr * ir
                top[b] = score if score > top[b] else top[b]
        for b in range(B):
            sl[b] += gb[s, b]
        xprev = x


@njit(cache=True, nogil=True)
def _keep_mixed(row, cls, ties, n_ties):
    """ties[:n_ties]: ascending positions p in row whose value equals that at
    p - 1 (consecutive positions: one run of equal values).  Keeps the runs
    that hold samples of more than one class cls; returns their number of
    positions.  Samples of one class are interchangeable (see Data.cls): their
    order inside a run changes no sum and no later sort, so only mixed runs
    need sklearn's order."""
    kept = i = 0
    while i < n_ties:
        j = i
        while j + 1 < n_ties and ties[j + 1] == ties[j] + 1:
            j += 1
        c = cls[row[ties[i] - 1]]
        mixed = False
        for q in range(ties[i], ties[j] + 1):
            mixed = mixed or cls[row[q]] != c
        if mixed:
            for q in range(i, j + 1):
                ties[kept] = ties[q]
                kept += 1
        i = j + 1
    return kept


@njit(cache=True, nogil=True)
def _find_ties(row, xf, cls, start, end, ties):
    """Positions p in row[start:end] whose value equals that at p - 1, in runs
    of equal values that mix interchangeable classes (_keep_mixed)."""
    n_ties = 0
    for p in range(start + 1, end):
        if xf[row[p]] == xf[row[p - 1]]:
            ties[n_ties] = p
            n_ties += 1
    return _keep_mixed(row, cls, ties, n_ties)


@njit(cache=True, nogil=True, inline="always")
def _keep_best(proxy, p, best, best_p, second):
    """A candidate split's proxy at position p against the best so far (strict '>', as sklearn):
    returns the new (best, best_p, second best)."""
    if proxy > best:
        return proxy, p, max(second, best)
    return best, best_p, max(second, proxy)


@njit(cache=True, nogil=True)
def _scan_forward(row, xf, g, start, end, st, w, inv, gate):
    """sklearn's split search over one feature whose sum_left only ever grows
    (no rev): the same running sum, the same proxy, the first strictly best.
    row[start:end]: samples in sklearn's sorted order.  Positions scoring below
    gate cannot win and skip the divisions.  Returns (best proxy, position;
    end if none, best proxy at the other positions computed)."""
    best = second = -np.inf
    best_p = end
    sl = 0.0
    s = row[start]
    xprev = xf[s]
    sl += g[s]
    for p in range(start + 1, end):
        s = row[p]
        x = xf[s]
        if x > xprev + FEATURE_THRESHOLD:
            sr = st - sl
            if sl * sl * inv[p - start] + sr * sr * inv[end - p] >= gate:
                best, best_p, second = _keep_best(sl * sl / (p - start) + sr * sr / (w - (p - start)),
                                                  p, best, best_p, second)
        sl += g[s]
        xprev = x
    return best, best_p, second


@njit(cache=True, nogil=True, inline="always")
def _next_split(row, xf, g, end, st, pos, sl):
    """From split position pos (start at first) with sum_left sl, sklearn's next one in
    row[...:end] (values more than FEATURE_THRESHOLD apart) and Criterion.update's sum_left there,
    walked from the nearer end as update() does.  Returns (position; end if none, sum_left)."""
    p = pos + 1
    while p < end and xf[row[p]] <= xf[row[p - 1]] + FEATURE_THRESHOLD:
        p += 1
    if p >= end:
        return end, sl
    if p - pos <= end - p:
        for q in range(pos, p):
            sl += g[row[q]]
    else:
        sl = st
        for q in range(end - 1, p - 1, -1):
            sl -= g[row[q]]
    return p, sl


@njit(cache=True, nogil=True)
def _scan_exact(row, xf, g, start, end, st, w, inv, gate):
    """sklearn's split search over one feature, operation for operation
    (Criterion.reset/update, MSE.proxy_impurity_improvement, strict '>').
    row[start:end]: samples in sklearn's sorted order.  Positions whose
    division-free score is below gate cannot win and skip the divisions.
    Returns (best proxy, its position; end if none, best proxy at the other
    positions computed)."""
    best = second = -np.inf
    best_p = end
    sl = 0.0
    p = start
    while True:
        p, sl = _next_split(row, xf, g, end, st, p, sl)
        if p >= end:
            return best, best_p, second
        sr = st - sl
        if sl * sl * inv[p - start] + sr * sr * inv[end - p] < gate:
            continue
        best, best_p, second = _keep_best(sl * sl / (p - start) + sr * sr / (w - (p - start)),
                                          p, best, best_p, second)


@njit(cache=True, nogil=True)
def _scan(row, xf, g, start, end, st, w, inv, gate, rev):
    if rev:
        return _scan_exact(row, xf, g, start, end, st, w, inv, gate)
    return _scan_forward(row, xf, g, start, end, st, w, inv, gate)


@njit(cache=True, nogil=True)
def _order_of(cur, seg, samples, memo_orders, memo_scratch):
    """The order array that _split_node's cur points to."""
    if cur >= 0:
        return seg[cur]
    if cur == -1:
        return samples
    if cur == -3:
        return memo_scratch
    return memo_orders[-10 - cur]


@njit(cache=True, nogil=True)
def _sum_error(m, s_abs):
    """Bound on the difference between two sequential float64 sums of the same
    m terms in different orders (each is within (m-1) eps sum|term| of the
    exact sum), s_abs = sum |term|."""
    return 2.2 * m * EPSILON * s_abs


@njit(cache=True, nogil=True)
def _proxy_error(m, g_max, err):
    """Bound on the change of a proxy sl*sl/n_l + sr*sr/n_r (and of its
    division-free score) when the sums it derives from (sl, or st and the
    right part in sklearn's two-sided update) are each off by at most err:
    sl and sr = st - sl are then off by at most 2 err each, plus their own
    rounding.  |g| <= g_max, so |sl|/n_l, |sr|/n_r <= g_max."""
    err = 2.0 * err
    return 4.5 * g_max * err + 10.0 * EPSILON * m * g_max * g_max + 4.0 * err * err


@njit(cache=True, nogil=True)
def _proxy(sl, st, nl, w):
    """sklearn's proxy of a split with sum_left sl, node sum st, nl of w samples on the left."""
    sr = st - sl
    return sl * sl / nl + sr * sr / (w - nl)


@njit(cache=True, nogil=True)
def _pair_ok(best, nl_w, sl_w, exact_w, u_w, proxy, nl, sl, exact_c, u_c, c_first, st, w, delta):
    """Does the winner (proxy best) beat a candidate split (proxy) in sklearn's sums too?

    exact_*: the split's sum_left is sklearn's to the bit (no tied values of
    unknown order before it, forward scan).  Then only st can differ from
    sklearn's, by at most delta, and it moves both proxies alike: the same
    partition size and sum_left give the same proxy (draw order decides, as
    here); a gap larger than what delta and rounding can change is certain;
    else, when few floats lie within delta of st, each is tried as sklearn's
    st.  c_first: the candidate comes first in sklearn's scan, so it would win
    a tie.  Otherwise each proxy may be off by its u_* (see _split_node)."""
    if not (exact_w and exact_c):
        return best - proxy > u_w + u_c + 1e-13 * abs(best)
    if delta == 0.0 or (nl == nl_w and sl == sl_w):  # both computed exactly as sklearn does
        return True
    sr_w, sr, nr_w, nr = st - sl_w, st - sl, w - nl_w, w - nl
    slope = abs(sr_w / nr_w - sr / nr) + delta * (1.0 / nr_w + 1.0 / nr)
    drift = delta * (2.0 * slope + delta * abs(1.0 / nr_w - 1.0 / nr))
    if best - proxy > drift + 12.0 * EPSILON * (abs(best) + abs(proxy)):
        return True
    s, tries = np.nextafter(st - delta, -np.inf), 0
    while s <= st + delta:
        tries += 1
        if tries > 256:  # too many floats to try
            return False
        pw, pc = _proxy(sl_w, s, nl_w, w), _proxy(sl, s, nl, w)
        if pc > pw or (pc == pw and c_first):
            return False
        s = np.nextafter(s, np.inf)
    return True


@njit(cache=True, nogil=True)
def _beats_feature(row, xf, g, start, end, st, w, inv, gate, best_p, best, nl_w, sl_w, exact_w, u_w, exact_end, u_c,
                   same, before, delta):
    """_pair_ok for the winner against every split of one feature that _scan
    computes, with the same arithmetic as _scan_exact.  row[start:end]: the
    order it was scanned in; its splits at positions below exact_end have
    sklearn's sum_left.  same: it is the winner's feature (best_p: the
    winner's position); before: it was drawn before the winner's."""
    sl = 0.0
    p = start
    while True:
        p, sl = _next_split(row, xf, g, end, st, p, sl)
        if p >= end:
            return True
        sr = st - sl
        if (same and p == best_p) or sl * sl * inv[p - start] + sr * sr * inv[end - p] < gate:
            continue
        nl = p - start
        proxy = sl * sl / nl + sr * sr / (w - nl)
        c_first = before or (same and p < best_p)
        if not _pair_ok(best, nl_w, sl_w, exact_w, u_w, proxy, nl, sl, p < exact_end, u_c, c_first, st, w, delta):
            return False


@njit(cache=True, nogil=True)
def _certify_pairs(ws, seg, xt, g, start, end, st, w, inv, gate, best, best_f, best_p, e_node, e_dup, delta):
    """The speculative winner against each other computed split, pair by pair
    (_pair_ok): finer than one margin for all, since an uncertain st moves
    all proxies alike, and most near-ties are one partition found twice (by
    two features, or from both ends).  True if the winner is certainly
    sklearn's."""
    nv, vis_f, vis_const, exact, n_ties, ties, rev = (ws.n_vis[0], ws.vis_f, ws.vis_const, ws.exact, ws.n_ties,
                                                      ws.ties, ws.rev)
    exact_end = np.empty(nv, np.int64)  # per drawn feature: splits before this position have exact sums
    v_w = 0
    for v in range(nv):
        exact_end[v] = start if rev[v] else (end if n_ties[v] == 0 else ties[v, 0])
        if vis_f[v] == best_f:
            v_w = v
    row = seg[best_f]
    sl_w = 0.0
    for q in range(start, best_p):  # the winner's sum_left, as the forward scan adds it up
        sl_w += g[row[q]]
    exact_w = best_p < exact_end[v_w]
    u_w = e_node + (e_dup if n_ties[v_w] > 0 else 0.0)
    for v in range(nv):
        f = vis_f[v]
        if vis_const[v] or not exact[v]:
            continue
        u_c = e_node + (e_dup if n_ties[v] > 0 else 0.0)
        if not _beats_feature(seg[f], xt[f], g, start, end, st, w, inv, gate, best_p, best, best_p - start, sl_w,
                              exact_w, u_w, exact_end[v], u_c, f == best_f, v < v_w, delta):
            return False
    return True


@njit(cache=True, nogil=True)
def _split_node(data, ws, seg, g, start, end, st, w, s_abs, g_max, features, const_features, n_known,
                state, root_top, spec, e_st):
    """Best split of node samples[start:end], as sklearn's node_split_best.

    seg[f, start:end]: the node's samples sorted by feature f (ties in any
    order).  s_abs, g_max: sum and max of |g| over the node.  root_top (d,):
    the prescan scores when this is the root (start = 0, end = n), else empty.

    Exact mode (spec False): replays sklearn's sorts wherever the order of
    tied values matters and leaves samples[start:end] in sklearn's order after
    the search (sorted by the last drawn feature).  Speculative mode (spec):
    replays no sort; tied features are scanned with their ties in seg's order,
    st may be off by e_st (the node's own order was speculative), and the
    split found is only accepted if it beats every other split by more than
    what those orders can change (certified); samples[start:end] then holds
    the right samples, sorted by the last drawn feature, ties in seg's order.

    Returns (feature, position; end if no split, number of constant features
    for the children, ok: certified (always in exact mode), exact_order:
    samples holds sklearn's order)."""
    xt, rank, inv = data.xt, data.rank, data.inv
    samples, gpos, packed, tied, stack = ws.samples, ws.gpos, ws.packed, ws.tied, ws.stack
    vis_f, n_ties, top, ties = ws.vis_f, ws.n_ties, ws.top, ws.ties
    vis_const, dup, rev, exact, need = ws.vis_const, ws.dup, ws.rev, ws.exact, ws.need
    memo_next, memo_orders, memo_feature, memo_count, memo_scratch = (
        ws.memo_next, ws.memo_orders, ws.memo_feature, ws.memo_count, ws.memo_scratch)
    d = xt.shape[0]
    is_root = root_top.shape[0] > 0
    nv, n_total = _draw_features(features, const_features, n_known, state, seg, xt, start, end,
                                 vis_f, vis_const)
    ws.n_vis[0] = nv
    # Prescan every drawn non-constant feature.  Its scores are off by at
    # most e_dup when it has ties (its sums taken in a wrong order) and e_node
    # (st is off by e_st).  Any score, less those margins, is a lower bound lb
    # on the best proxy; positions scoring below gate cannot win.  In
    # speculative mode, exact scans still carry an error up to u: the gate is
    # lowered so that every split within 2 u of the best is computed.
    m = end - start
    e_dup = _proxy_error(m, g_max, _sum_error(m, s_abs))
    e_node = _proxy_error(m, g_max, e_st) if e_st > 0.0 else 0.0
    lb = -np.inf
    u = 0.0
    any_split = False
    for v in range(nv):
        f = vis_f[v]
        top[v] = -1.0
        rev[v] = False
        n_ties[v] = 0
        if vis_const[v]:
            continue
        if is_root:
            top[v], n_ties[v], rev[v] = root_top[f], data.root_n_ties[f], data.root_rev[f]
            _copy(ties[v], data.root_ties[f], 0, n_ties[v])
        else:
            top[v], n_ties[v], rev[v] = _prescan(seg[f], xt[f], data.cls, g, start, end, st, inv, ties[v])
        any_split = any_split or top[v] >= 0.0
        e_v = e_node + (e_dup if n_ties[v] > 0 else 0.0)
        if not rev[v]:
            lb = max(lb, top[v] - top[v] * PRUNE_MARGIN - e_v)
        if spec:
            u = max(u, e_v)
    gate = lb - abs(lb) * 1e-14 - 2.0 * u
    # The features that may hold the best split get an exact scan, in their
    # true order (exact mode).  Orders needed: the last one (the children's
    # sample order), those of tied features to scan, and what they derive from.
    needed = any_split and not spec
    for v in range(nv - 1, -1, -1):
        if vis_const[v] and (needed or (spec and v == nv - 1)):
            n_ties[v] = _find_ties(seg[vis_f[v]], xt[vis_f[v]], data.cls, start, end, ties[v])
        dup[v] = n_ties[v] > 0
        exact[v] = not vis_const[v] and (rev[v] or top[v] + e_node + (e_dup if dup[v] else 0.0) >= gate)
        need[v] = needed or (exact[v] and dup[v] and not spec)
        needed = need[v] and dup[v]
    # Replay sklearn's sorts in draw order and pick the first strictly best
    # split.  cur says where the current order is: seg[cur] (cur >= 0),
    # samples (-1; at the root: the identity), memo_orders[-10 - cur] (<= -10)
    # or memo_scratch (-3).  The root always starts from the same order and
    # sorts the same samples, so its sorts are memoised: memo_next[key of
    # the order, f] is the order after sorting it by f.
    cur = -1
    best = second = -np.inf
    best_f, best_p = -1, end
    for v in range(nv):
        f = vis_f[v]
        proxy, p, other = -np.inf, end, -np.inf
        if dup[v] and need[v]:
            key = nxt = -1
            if is_root and cur != -3:
                key = 0 if cur == -1 else (1 + cur if cur >= 0 else 1 + d - 10 - cur)
                nxt = memo_next[key, f]
            if key >= 0 and nxt >= 0:
                cur = -10 - nxt
            else:
                src = _order_of(cur, seg, samples, memo_orders, memo_scratch)
                if not is_root:
                    out, cur = samples, -1
                elif memo_count[0] < memo_orders.shape[0]:
                    out, cur = memo_orders[memo_count[0]], -10 - memo_count[0]
                else:
                    out, cur = memo_scratch, -3
                _sklearn_order(rank[f], seg[f], src, start, end, ties[v], n_ties[v], out, packed, gpos,
                               tied, stack)
                if cur <= -10:  # a new root order, unless it is a known one
                    j = -10 - cur
                    for i in range(j):
                        if memo_feature[i] == f:
                            q = 0
                            while q < end and memo_orders[i, q] == out[q]:
                                q += 1
                            if q == end:
                                j = i
                                break
                    if j == memo_count[0]:
                        memo_feature[j] = f
                        memo_count[0] += 1
                    cur = -10 - j
                    if key >= 0:
                        memo_next[key, f] = j
            if exact[v]:
                proxy, p, other = _scan(_order_of(cur, seg, samples, memo_orders, memo_scratch), xt[f], g,
                                        start, end, st, w, inv, gate, rev[v])
        elif dup[v] and not spec:
            cur = -2  # an order nobody needs
        else:  # untied: seg's order is sklearn's; tied in speculative mode: seg's order instead
            cur = f
            if exact[v]:
                proxy, p, other = _scan(seg[f], xt[f], g, start, end, st, w, inv, gate, rev[v])
        second = max(second, other)
        if p < end and proxy > best:  # first strictly better, in draw order
            second = max(second, best)
            best, best_f, best_p = proxy, f, p
        else:
            second = max(second, proxy)
    ok = True
    if spec and best_p < end and u > 0.0:  # certify: nothing else can be as good in sklearn's sums
        ok = best - second > 2.0 * u + 1e-13 * abs(best) and best - u > gate + abs(gate) * 1e-13 + u
        if not ok and best - u > gate + abs(gate) * 1e-13 + u:
            ok = _certify_pairs(ws, seg, xt, g, start, end, st, w, inv, gate, best, best_f, best_p, e_node, e_dup,
                                e_st)
    if cur != -1 and best_p < end:
        _copy(samples, _order_of(cur, seg, samples, memo_orders, memo_scratch), start, end)
    exact_order = not spec or nv == 0 or not dup[nv - 1]
    return best_f, best_p, n_total, ok, exact_order


@njit(cache=True, nogil=True)
def _replay_order(data, ws, seg, start, end, nv, vis_f):
    """samples[start:end] (a node's sklearn order before its split search) ->
    sklearn's order after it: the sorts of the drawn features vis_f[:nv], as
    far as they matter for the last one."""
    xt, rank = data.xt, data.rank
    ties, n_ties, need = ws.ties, ws.n_ties, ws.need
    needed = True
    for v in range(nv - 1, -1, -1):
        n_ties[v] = _find_ties(seg[vis_f[v]], xt[vis_f[v]], data.cls, start, end, ties[v]) if needed else 0
        need[v] = needed
        needed = needed and n_ties[v] > 0
    cur = -1
    for v in range(nv):
        f = vis_f[v]
        if not need[v]:
            continue
        if n_ties[v] > 0:
            _sklearn_order(rank[f], seg[f], ws.samples if cur == -1 else seg[cur], start, end, ties[v],
                           n_ties[v], ws.samples, ws.packed, ws.gpos, ws.tied, ws.stack)
            cur = -1
        else:
            cur = f
    if cur >= 0:
        _copy(ws.samples, seg[cur], start, end)


@njit(cache=True, nogil=True)
def _partition_final(samples, xf, start, end, threshold):
    """DensePartitioner.partition_samples_final: in-place two-pointer swap,
    whose output order the children's sums depend on."""
    lo, hi = start, end
    while lo < hi:
        if xf[samples[lo]] <= threshold:
            lo += 1
        else:
            hi -= 1
            samples[lo], samples[hi] = samples[hi], samples[lo]


@njit(cache=True, nogil=True)
def _partition_segments(src, dst, start, end, pos, goleft, is_const):
    """Stable partition of every non-constant feature's sorted segment
    src[f, start:end] into dst[f, start:pos] (left child) and dst[f, pos:end]:
    the children's segments stay sorted."""
    for f in range(is_const.shape[0]):
        if is_const[f]:
            continue
        srow, drow = src[f], dst[f]
        # Branch-free: one store to either side.  Unsigned indices spare
        # numba's negative-index checks.
        left, right, one = np.uint64(start), np.uint64(pos), np.uint64(1)
        for q in range(start, end):
            s = srow[q]
            gl = np.uint64(goleft[s])
            drow[right + gl * (left - right)] = s
            left += gl
            right += one - gl


# --------------------------------------------------------------------------
# One tree (DepthFirstTreeBuilder.build), its leaf values and importances


@njit(cache=True, nogil=True)
def _node_sums(g, samples, start, end):
    """Criterion.init's sums over samples[start:end] in that order: (sum g,
    sum g^2), and sum |g|, max |g| for error bounds."""
    st = sq = s_abs = g_max = 0.0
    for p in range(start, end):
        y = g[samples[p]]
        st += y
        sq += y * y
        s_abs += abs(y)
        g_max = max(g_max, abs(y))
    return st, sq, s_abs, g_max


@njit(cache=True, nogil=True)
def _children_impurity(g, samples, start, pos, end, st, sq):
    """Criterion.reset(); update(pos); children_impurity(): the children's
    impurities from samples[start:pos] and samples[pos:end] in that order."""
    if pos - start <= end - pos:  # update() walks from the nearer end
        sl = 0.0
        for q in range(start, pos):
            sl += g[samples[q]]
    else:
        sl = st
        for q in range(end - 1, pos - 1, -1):
            sl -= g[samples[q]]
    sq_l = 0.0
    for q in range(start, pos):
        y = g[samples[q]]
        sq_l += y * y
    wl = float(pos - start)
    wr = float(end - pos)
    sr = st - sl
    return sq_l / wl - (sl / wl) * (sl / wl), (sq - sq_l) / wr - (sr / wr) * (sr / wr)


@njit(cache=True, nogil=True)
def _impurity_error(m, sq, s_abs, g_max, w):
    """Bound on the change of an impurity sq_c/w - (s_c/w)^2 of w of a node's
    m samples when its sums are taken in another order (sq, s_abs, g_max: the
    node's sum g^2, sum |g|, max |g|).  A right child's sums are differences
    of two sums, hence the factor 2."""
    e1 = 2.0 * _sum_error(m, s_abs) / w
    return 2.0 * _sum_error(m, sq) / w + 2.0 * g_max * e1 + e1 * e1 + 8.0 * EPSILON * (sq / w + g_max * g_max)


# Path records: what a split node on the current path (one per depth) needs for
# replaying its order later.  Integer fields of path_i, float fields of path_f.
P_START, P_END, P_POS, P_FEATURE, P_NV, P_CERTAIN, P_LEFT, P_RIGHT, P_SLOT = range(9)
F_THR, F_ST, F_SQ, F_ABS, F_MAX = range(5)
SPEC_LEVELS = 3  # the last levels of splits run speculatively (all of them for DCI's depth 3)


@njit(cache=True, nogil=True)
def _segments(data, ws, depth):
    """The sorted segments of the nodes at this depth (see Workspace.idx)."""
    return data.order0 if depth == 0 else ws.idx[depth % SPEC_LEVELS]


@njit(cache=True, nogil=True)
def _children_known(row, ties, n_ties, xf, threshold):
    """Whose order is sklearn's, (left child, right child), after a speculative search whose last
    sort left runs of tied values in an unknown order: row[...] is that sort (ties[:n_ties] its
    mixed runs, as _find_ties gives them), xf the split feature.  _partition_final moves samples by
    which side they go to; a run whose members all go one way is only permuted among the same
    slots of that child, and leaves the other child's order as sklearn's.  A run split between
    the sides changes the moves, hence both orders."""
    left_known = right_known = True
    i = 0
    while i < n_ties:
        j = i
        while j + 1 < n_ties and ties[j + 1] == ties[j] + 1:
            j += 1
        n_left = 0
        for q in range(ties[i] - 1, ties[j] + 1):  # the run's members
            n_left += 1 if xf[row[q]] <= threshold else 0
        left_known = left_known and n_left == 0
        right_known = right_known and n_left == ties[j] - ties[i] + 2
        i = j + 1
    return left_known, right_known


@njit(cache=True, nogil=True)
def _restore_path(data, ws, g, depth, start, path_i, path_f, path_vis, impurity, stk, stk_imp):
    """Put sklearn's order of the node samples[start:...] at `depth` into samples.

    Its ancestors down from the deepest one whose own order is sklearn's (a) ran
    speculatively.  From a's snapshot, replay each one's sorts and partition, as
    sklearn did: the path's nodes and the pending right children on the way get
    their true orders (snapshotted, flagged certain) and their true impurities.
    Returns the node's impurity."""
    samples = ws.samples
    a = depth - 1
    while path_i[a, P_CERTAIN] == 0:
        a -= 1
    _copy(samples, ws.snap[a % SPEC_LEVELS], path_i[a, P_START], path_i[a, P_END])
    imp = 0.0
    for b in range(a, depth):
        s0, e0, pos, f = path_i[b, P_START], path_i[b, P_END], path_i[b, P_POS], path_i[b, P_FEATURE]
        if b > a:  # its sums were taken in a speculative order
            path_f[b, F_ST], path_f[b, F_SQ], _, _ = _node_sums(g, samples, s0, e0)
        _replay_order(data, ws, _segments(data, ws, b), s0, e0, path_i[b, P_NV], path_vis[b])
        _partition_final(samples, data.xt[f], s0, e0, path_f[b, F_THR])
        il, ir = _children_impurity(g, samples, s0, pos, e0, path_f[b, F_ST], path_f[b, F_SQ])
        if path_i[b, P_LEFT] >= 0:
            impurity[path_i[b, P_LEFT]] = il
        if path_i[b, P_RIGHT] >= 0:
            impurity[path_i[b, P_RIGHT]] = ir
        elif path_i[b, P_SLOT] >= 0:  # the right child waits on the stack
            stk_imp[path_i[b, P_SLOT]] = ir
            stk[path_i[b, P_SLOT], 6] = stk[path_i[b, P_SLOT], 7] = 1
        c_start = path_i[b + 1, P_START] if b + 1 < depth else start
        imp = il if c_start == s0 else ir
        c_end = pos if c_start == s0 else e0
        _copy(ws.snap[(b + 1) % SPEC_LEVELS], samples, c_start, c_end)
        path_i[b, P_CERTAIN] = 1
        if b + 1 < depth:
            path_i[b + 1, P_CERTAIN] = 1
    return imp


@njit(cache=True, nogil=True)
def _build_tree(data, ws, g, seed, max_depth, root_top, trees, k):
    """Fit one regression tree on g (n,) like DecisionTreeRegressor(max_depth,
    random_state) with unit sample weights into trees.*[k] (nodes in
    sklearn's order: depth-first, left first) and ws.leaf_of (the leaf of each
    sample).  root_top (d,): the root's prescan scores.  Returns the node count.

    Sample orders: sklearn's order of a node's samples matters through the
    rounding of sums.  Replaying its sorts (exact mode) is costly, and its
    effect is nil unless two splits are within rounding of each other, so the
    last SPEC_LEVELS levels of splits run speculatively (see _split_node): a
    node may leave its children with a possibly wrong order ("uncertain"), and
    every decision taken in such an order is certified with error bounds.
    When one is not, the node's true order is replayed (_restore_path) and the
    decision taken again in exact mode."""
    xt = data.xt
    feature, threshold, left, right = trees.feature[k], trees.threshold[k], trees.left[k], trees.right[k]
    impurity, weight, value = trees.impurity[k], trees.weight[k], trees.value[k]
    samples, leaf_of, goleft, is_const = ws.samples, ws.leaf_of, ws.goleft, ws.is_const
    d, n = xt.shape
    features = np.arange(d)
    const_features = np.zeros(d, np.int64)
    state = np.full(1, seed, np.int64)
    saved_features = np.empty(d, np.int64)  # the draw state before a split search, to redo it
    saved_const = np.empty(d, np.int64)
    saved_state = 0
    for i in range(n):
        samples[i] = i
    # The split nodes on the current path, by depth (see P_* and F_*).
    path_i = np.full((max_depth + 1, 9), -1, np.int64)
    path_f = np.zeros((max_depth + 1, 5))
    path_vis = np.empty((max_depth + 1, d), np.int64)
    # Stack of nodes to build: start, end, depth, parent, is_left, n_const, order certain, impurity
    # certain; impurity.  Certain: sklearn's (the order up to interchangeable samples).
    stk = np.zeros((max_depth + 2, 8), np.int64)
    stk_imp = np.empty(max_depth + 2)
    stk[0, 1], stk[0, 3], stk[0, 6], stk[0, 7] = n, -1, 1, 1
    stk_imp[0] = np.inf
    top = 1
    node_count = 0
    no_root_top = root_top[:0]
    while top > 0:
        top -= 1
        start, end, depth = stk[top, 0], stk[top, 1], stk[top, 2]
        parent, is_left, n_const = stk[top, 3], stk[top, 4], stk[top, 5]
        certain, imp_certain = stk[top, 6] == 1, stk[top, 7] == 1
        imp = stk_imp[top]
        m = end - start
        w = float(m)
        seg = _segments(data, ws, depth)
        spec = max_depth - SPEC_LEVELS <= depth < max_depth  # speculative first attempt
        if spec:  # to redo the split search exactly: its draw state, the node's order
            saved_state = state[0]
            _copy(saved_features, features, 0, d)
            _copy(saved_const, const_features, 0, d)
            _copy(ws.snap[depth % SPEC_LEVELS], samples, start, end)
        f = pos = n_total = -1
        thr = imp_l = imp_r = 0.0
        st = sq = s_abs = g_max = 0.0
        children_exact = True
        restore = False  # the next attempt needs the true impurity, hence the parent's true order
        # A speculative attempt that fails is redone in exact mode from the node's true order;
        # if a decision on its impurity still is not certain, once more with the true impurity.
        for attempt in range(3):
            exact_mode = attempt > 0 or not spec
            if attempt > 0:
                state[0] = saved_state
                _copy(features, saved_features, 0, d)
                _copy(const_features, saved_const, 0, d)
                if certain and not restore:
                    _copy(samples, ws.snap[depth % SPEC_LEVELS], start, end)
                else:  # replay the ancestors' orders; now this node's order and impurity are sklearn's
                    imp = _restore_path(data, ws, g, depth, start, path_i, path_f, path_vis, impurity, stk,
                                        stk_imp)
                    certain = imp_certain = True
            is_leaf = depth >= max_depth or m < 2
            st, sq, s_abs, g_max = 0.0, 0.0, 0.0, 0.0
            if not is_leaf or node_count == 0:
                st, sq, s_abs, g_max = _node_sums(g, samples, start, end)
            if node_count == 0:
                imp = sq / w - (st / w) * (st / w)
            # Bound on the error of imp when the parent's sums were taken in a wrong order.
            e_imp = 0.0 if imp_certain else _impurity_error(
                path_i[depth - 1, P_END] - path_i[depth - 1, P_START], path_f[depth - 1, F_SQ],
                path_f[depth - 1, F_ABS], path_f[depth - 1, F_MAX], w)
            if not imp_certain and not is_leaf and abs(imp - EPSILON) <= e_imp:  # imp <= EPSILON undecided
                restore = True
                continue
            is_leaf = is_leaf or imp <= EPSILON
            if is_leaf:
                break
            e_st = 0.0 if certain or m <= 2 else _sum_error(m, s_abs)  # a sum of two terms has one order
            f, pos, n_total, ok, children_exact = _split_node(
                data, ws, seg, g, start, end, st, w, s_abs, g_max, features, const_features, n_const, state,
                root_top if depth == 0 else no_root_top, not exact_mode, e_st)
            if not ok:
                continue
            if pos >= end:
                is_leaf = True
                break
            xf = xt[f]
            thr = float(xf[seg[f, pos - 1]]) / 2.0 + float(xf[seg[f, pos]]) / 2.0
            _partition_final(samples, xf, start, end, thr)
            imp_l, imp_r = _children_impurity(g, samples, start, pos, end, st, sq)
            wl = float(pos - start)
            wr = w - wl
            improvement = (w / n) * (imp - (wr / w * imp_r) - (wl / w * imp_l))
            # Certify improvement + EPSILON < 0 (min_impurity_decrease = 0) when imp or the
            # children's impurities (their sums, in the order found) may not be sklearn's.
            children_sums_known = certain and children_exact
            if e_imp > 0.0 or not children_sums_known:
                e_c = 0.0 if children_sums_known else (wr / w * _impurity_error(m, sq, s_abs, g_max, wr)
                                                        + wl / w * _impurity_error(m, sq, s_abs, g_max, wl))
                bound = (w / n) * (e_imp + e_c + 8.0 * EPSILON * (abs(imp) + abs(imp_l) + abs(imp_r)))
                if abs(improvement + EPSILON) <= bound:
                    restore = not imp_certain
                    continue
            is_leaf = improvement + EPSILON < 0.0
            break
        node = node_count
        node_count += 1
        if parent >= 0:
            if is_left:
                left[parent] = node
            else:
                right[parent] = node
            path_i[depth - 1, P_LEFT if is_left else P_RIGHT] = node
        impurity[node] = imp
        weight[node] = w
        value[node] = st / w
        if is_leaf:
            feature[node] = -2
            threshold[node] = -2.0
            left[node] = right[node] = TREE_LEAF
            for p in range(start, end):
                leaf_of[samples[p]] = node
            continue
        feature[node] = f
        threshold[node] = thr
        if depth + 1 < max_depth:  # children will search splits: keep their segments sorted
            for p in range(start, end):
                goleft[samples[p]] = 1 if p < pos else 0
            for i in range(d):
                is_const[i] = False
            for i in range(n_total):
                is_const[const_features[i]] = True
            _partition_segments(seg, _segments(data, ws, depth + 1), start, end, pos, goleft, is_const)
        # Its record on the path, for replaying its order from a descendant.
        rec = path_i[depth]
        rec[P_START], rec[P_END], rec[P_POS], rec[P_FEATURE], rec[P_NV] = start, end, pos, f, ws.n_vis[0]
        rec[P_CERTAIN], rec[P_LEFT], rec[P_RIGHT], rec[P_SLOT] = 1 if certain else 0, -1, -1, top
        path_f[depth, F_THR], path_f[depth, F_ST], path_f[depth, F_SQ] = thr, st, sq
        path_f[depth, F_ABS], path_f[depth, F_MAX] = s_abs, g_max
        _copy(path_vis[depth], ws.vis_f, 0, ws.n_vis[0])
        # A child's order is sklearn's when the last sort left no run of tied values of unknown order
        # in it (whatever this node's order was); the impurities also need this node's sums.
        left_known = right_known = children_exact
        if not children_exact:
            v = ws.n_vis[0] - 1
            left_known, right_known = _children_known(seg[ws.vis_f[v]], ws.ties[v], ws.n_ties[v], xf, thr)
        # Push the right child, then the left one (popped first).
        stk[top, 0], stk[top, 1], stk_imp[top], stk[top, 6] = pos, end, imp_r, 1 if right_known else 0
        stk[top + 1, 0], stk[top + 1, 1], stk_imp[top + 1], stk[top + 1, 6] = start, pos, imp_l, 1 if left_known else 0
        for j in range(2):
            stk[top + j, 2], stk[top + j, 3], stk[top + j, 4] = depth + 1, node, j
            stk[top + j, 5], stk[top + j, 7] = n_total, 1 if certain and children_exact else 0
        top += 2
    return node_count


@njit(cache=True, nogil=True)
def _leaf_values(g, yk, leaf_of, node_count, left, factor, value, buf):
    """_update_terminal_regions: each leaf's value = factor * mean(g) /
    mean(p (1 - p)) with p = yk - g, means by numpy's pairwise sum over the
    leaf's samples in index order; 0 where the denominator is below 1e-150."""
    n = g.shape[0]
    count = np.zeros(node_count + 1, np.int64)
    for i in range(n):
        count[leaf_of[i] + 1] += 1
    for j in range(node_count):  # count[j]: start of leaf j's samples in buf
        count[j + 1] += count[j]
    fill = count.copy()
    for i in range(n):
        j = leaf_of[i]
        prob = yk[i] - g[i]
        buf[0, fill[j]] = g[i]
        buf[1, fill[j]] = prob * (1.0 - prob)
        fill[j] += 1
    for j in range(node_count):
        if left[j] != TREE_LEAF:
            continue
        c = count[j + 1] - count[j]
        num = _pairwise_sum(buf[0], count[j], c) / c * factor
        den = _pairwise_sum(buf[1], count[j], c) / c
        value[j] = 0.0 if abs(den) < 1e-150 else num / den


@njit(cache=True, nogil=True)
def _fit_trees(ks, data, ws, neg_g, neg_g_t, y, seeds, max_depth, learning_rate, factor, raw, trees,
               node_count, importances):
    """Fit the trees ks (consecutive) of one stage, tree k on neg_g[k]
    (neg_g_t: neg_g.T), set their leaf values, add learning_rate * leaf value
    to raw[k] (raw: (K, n)), store each tree's unnormalised feature
    importances (Tree.compute_feature_importances).  trees: the stage's node
    arrays, each (K, max_nodes)."""
    xt, order0, inv = data.xt, data.order0, data.inv
    d, n = xt.shape
    multiclass = raw.shape[0] > 1
    B = ks.shape[0]
    # The root prescan of all these trees in one pass per feature.
    gb = neg_g_t[:, ks[0]:ks[0] + B]
    sums, root_top = ws.batch_sums[0, :B], ws.batch_top[:, :B]
    for b in range(B):
        st = 0.0
        for i in range(n):
            st += neg_g[ks[b], i]  # the root's sum, in the root's sample order
        sums[b] = st
    for f in range(d):
        _prescan_root(order0[f], xt[f], gb, sums, inv, ws.batch_sums[1, :B], root_top[f])
    yk = np.empty(n)
    top_b = np.empty(d)
    leaf_of = ws.leaf_of
    for b in range(B):
        k = ks[b]
        g = neg_g[k]
        for i in range(n):  # the 0/1 target of this tree's line search
            yk[i] = (1.0 if y[i] == k else 0.0) if multiclass else y[i]
        for f in range(d):
            top_b[f] = root_top[f, b]
        nc = _build_tree(data, ws, g, seeds[k], max_depth, top_b, trees, k)
        node_count[k] = nc
        feature, left, right = trees.feature[k], trees.left[k], trees.right[k]
        impurity, weight, value = trees.impurity[k], trees.weight[k], trees.value[k]
        _leaf_values(g, yk, leaf_of, nc, left, factor, value, ws.leaf_sums)
        for i in range(n):
            raw[k, i] += learning_rate * value[leaf_of[i]]
        imp = importances[k]
        for f in range(d):
            imp[f] = 0.0
        for j in range(nc):
            if left[j] != TREE_LEAF:
                lc, rc = left[j], right[j]
                imp[feature[j]] += (weight[j] * impurity[j] - weight[lc] * impurity[lc]
                                    - weight[rc] * impurity[rc])
        for f in range(d):
            imp[f] /= weight[0]


@njit(cache=True, nogil=True)
def _neg_gradient(raw, y, out, out_t):
    """-gradient of HalfMultinomialLoss (K >= 3 rows) or HalfBinomialLoss
    (1 row) at raw (K, n), as sklearn's Cython loss computes it -> out (K, n)
    and its transpose out_t (n, K)."""
    K, n = raw.shape
    if K == 1:
        for i in range(n):
            r = raw[0, i]
            if r > -37:
                e = math.exp(-r)
                out[0, i] = -(((1 - y[i]) - y[i] * e) / (1 + e))
            else:
                out[0, i] = -(math.exp(r) - y[i])
            out_t[i, 0] = out[0, i]
        return
    p = np.empty(K)
    for i in range(n):
        mx = raw[0, i]
        for k in range(1, K):
            if mx < raw[k, i]:
                mx = raw[k, i]
        s = 0.0
        for k in range(K):
            p[k] = math.exp(raw[k, i] - mx)
            s += p[k]
        for k in range(K):
            out[k, i] = -(p[k] / s - (1.0 if y[i] == k else 0.0))
            out_t[i, k] = out[k, i]


@njit(cache=True, nogil=True)
def _predict_raw(x, learning_rate, depth, child, feature, threshold, value, raw):
    """raw (K, n) += learning_rate * leaf value of every tree, stage by stage
    as sklearn's predict_stages adds them (x (n, d) float32; x <= threshold
    goes left).  Tree by tree (it stays in cache), and branch-free: leaves
    are their own children under an infinite threshold, so every sample takes
    depth steps."""
    n_stages, K = feature.shape[:2]
    for s in range(n_stages):
        for k in range(K):
            ch, fe, th, va = child[s, k], feature[s, k], threshold[s, k], value[s, k]
            for i in range(x.shape[0]):
                node = 0
                for _ in range(depth):
                    node = ch[node, 1 if x[i, fe[node]] > th[node] else 0]
                raw[k, i] += learning_rate * va[node]


# --------------------------------------------------------------------------
# Public API


def _as_float32(x):
    """X as sklearn's trees see it: float32, C order, finite."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n_samples, n_features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinity")
    return x


def _init_raw(prior, n):
    """Initial raw predictions (n, K) like sklearn: DummyClassifier('prior')
    probabilities, clipped to [eps, 1 - eps], through the loss's link (logit;
    symmetric multinomial logit).  Computed on the full (n, K) array, as sklearn
    does, so numpy's reductions see the same shapes."""
    proba = np.ones((n, 1)) * prior
    eps = np.finfo(np.float64).eps
    if prior.shape[0] == 2:
        return scipy.special.logit(np.clip(proba[:, 1], eps, 1 - eps, dtype=np.float64)).reshape(-1, 1)
    proba = np.clip(proba, eps, 1 - eps, dtype=np.float64)
    return np.log(proba / scipy.stats.gmean(proba, axis=1)[:, None])


class GradientBoostedTrees:
    """A fitted model (see fit): classes_, feature_importances_ (d,),
    decision_function, predict; trees (Trees: node arrays (n_stages, K,
    max_nodes), K = 1 for two classes), node_count (n_stages, K) and
    train_raw_: decision_function of the training x, for free."""

    def __init__(self, classes, prior, learning_rate, max_depth, trees, node_count, tree_importances, train_raw):
        self.classes_ = classes
        self.class_prior_ = prior
        self.learning_rate, self.max_depth = learning_rate, max_depth
        self.trees, self.node_count = trees, node_count
        self.n_estimators_ = node_count.shape[0]
        # The training samples' raw scores, as decision_function(x_train) computes them.
        self.train_raw_ = train_raw
        # For prediction, leaves point to themselves under an infinite threshold.
        leaf = trees.left == TREE_LEAF
        node = np.arange(trees.left.shape[-1])
        self._child = np.stack([np.where(leaf, node, trees.left), np.where(leaf, node, trees.right)], axis=-1)
        self._feature = np.where(leaf, 0, trees.feature)
        self._threshold = np.where(leaf, np.inf, trees.threshold)
        self.n_features_in_ = tree_importances.shape[-1]
        # GradientBoostingClassifier.feature_importances_: mean over trees with
        # more than one node of the unnormalised importances, normalised.
        relevant = tree_importances[node_count > 1]  # (T', d), stage-major like sklearn's list
        if relevant.shape[0] == 0:
            self.feature_importances_ = np.zeros(self.n_features_in_)
        else:
            mean = np.mean(relevant, axis=0, dtype=np.float64)
            self.feature_importances_ = mean / np.sum(mean)

    def decision_function(self, x) -> np.ndarray:
        """Raw scores (n, K), or (n,) for two classes, like sklearn's."""
        x = _as_float32(x)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"x has {x.shape[1]} features, the model {self.n_features_in_}")
        raw = np.ascontiguousarray(_init_raw(self.class_prior_, x.shape[0]).T)  # (K, n)
        _predict_raw(x, self.learning_rate, self.max_depth, self._child, self._feature, self._threshold,
                     self.trees.value, raw)
        return raw[0] if raw.shape[0] == 1 else raw.T

    def predict(self, x) -> np.ndarray:
        """Class labels (n,): argmax of the raw scores (raw >= 0 for two classes)."""
        raw = self.decision_function(x)
        encoded = (raw >= 0).astype(int) if raw.ndim == 1 else np.argmax(raw, axis=1)
        return self.classes_[encoded]


class Trees(NamedTuple):
    """Node arrays of all trees, each (n_stages, K, max_nodes); nodes in
    sklearn's order, children -1 at leaves, value: the leaf values."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    impurity: np.ndarray
    weight: np.ndarray
    value: np.ndarray


class Data(NamedTuple):
    """What the kernels know of X (n samples, d features), fixed for a fit."""

    xt: np.ndarray  # (d, n) float32: X by feature
    order0: np.ndarray  # (d, n) int32: each feature's argsort (stable)
    rank: np.ndarray  # (d, n) int32: rank of each sample's value, equal values equal rank
    inv: np.ndarray  # (n + 1,): inv[m] = 1 / m (inv[0] unused)
    cls: np.ndarray  # (n,) int32: class of interchangeable samples (equal rows of X, equal labels)
    root_ties: np.ndarray  # (d, n) int32: _find_ties of order0[f]
    root_n_ties: np.ndarray  # (d,) their number
    root_rev: np.ndarray  # (d,) bool: _prescan's rev at the root


class Workspace(NamedTuple):
    """Scratch arrays of one tree-building thread."""

    idx: np.ndarray  # (SPEC_LEVELS, d, n) int32: the nodes' sorted segments below the root, by depth mod 3
    samples: np.ndarray  # (n,) int32: sklearn's samples array
    snap: np.ndarray  # (SPEC_LEVELS, n) int32: orders before a speculative split search, by depth mod 3
    leaf_of: np.ndarray  # (n,) int32: each sample's leaf in the last tree
    gpos: np.ndarray  # (n,) int32: _sklearn_order's group positions
    packed: np.ndarray  # (n,) int64: _sklearn_order's keys
    goleft: np.ndarray  # (n,) uint8: 1 for the samples of the left child
    tied: np.ndarray  # (n,) uint8 zeros: _sklearn_order's tied ranks
    is_const: np.ndarray  # (d,) bool
    stack: np.ndarray  # (3 * 64 * 64,) int64: introsort stack
    n_vis: np.ndarray  # (1,) int64: the number of drawn features of a node
    vis_f: np.ndarray  # (d,) int64: the drawn features
    n_ties: np.ndarray  # (d,) int64: their number of ties
    top: np.ndarray  # (d,) their prescan score
    vis_const: np.ndarray  # (d,) bool: found constant
    dup: np.ndarray  # (d,) bool: has ties
    rev: np.ndarray  # (d,) bool: needs sklearn's two-sided update
    exact: np.ndarray  # (d,) bool: gets an exact scan
    need: np.ndarray  # (d,) bool: its true order is needed
    ties: np.ndarray  # (d, n) int32: positions of ties per drawn feature
    memo_next: np.ndarray  # (1 + d + cap, d) int64: the root's sort memo (-1: unknown)
    memo_orders: np.ndarray  # (cap, n) int32: its orders
    memo_feature: np.ndarray  # (cap,) int64: their feature
    memo_count: np.ndarray  # (1,) int64: orders in use
    memo_scratch: np.ndarray  # (n,) int32: an order when the memo is full
    leaf_sums: np.ndarray  # (2, n): leaf value sums
    batch_sums: np.ndarray  # (2, B): their root sums; running sums
    batch_top: np.ndarray  # (d, B): their root prescan scores


def _workspace(n, d, batch):
    cap = max(4, min(64, 2 ** 24 // max(n, 1)))  # root orders memoised

    def flags():
        return np.empty(d, np.bool_)

    return Workspace(
        idx=np.empty((SPEC_LEVELS, d, n), np.int32), samples=np.empty(n, np.int32),
        snap=np.empty((SPEC_LEVELS, n), np.int32),
        leaf_of=np.empty(n, np.int32), gpos=np.empty(n, np.int32), packed=np.empty(n, np.int64),
        goleft=np.zeros(n, np.uint8), tied=np.zeros(n, np.uint8), is_const=np.zeros(d, np.bool_),
        stack=np.empty(3 * 64 * 64, np.int64), n_vis=np.zeros(1, np.int64), vis_f=np.empty(d, np.int64),
        n_ties=np.empty(d, np.int64), top=np.empty(d), vis_const=flags(), dup=flags(), rev=flags(),
        exact=flags(), need=flags(), ties=np.empty((d, n), np.int32),
        memo_next=np.full((1 + d + cap, d), -1, np.int64), memo_orders=np.empty((cap, n), np.int32),
        memo_feature=np.empty(cap, np.int64), memo_count=np.zeros(1, np.int64),
        memo_scratch=np.empty(n, np.int32), leaf_sums=np.empty((2, n)),
        batch_sums=np.empty((2, batch)), batch_top=np.empty((d, batch)))


def _data(x, y):
    """Data for x (n, d) float32 and labels y (n,)."""
    n, d = x.shape
    xt = np.ascontiguousarray(x.T)
    order0 = np.argsort(xt, axis=1, kind="stable").astype(np.int32)
    sorted_x = np.take_along_axis(xt, order0, axis=1)
    ranks = np.concatenate([np.zeros((d, 1), np.int32),
                            np.cumsum(sorted_x[:, 1:] != sorted_x[:, :-1], axis=1, dtype=np.int32)], axis=1)
    rank = np.empty((d, n), np.int32)
    np.put_along_axis(rank, order0, ranks, axis=1)
    inv = 1.0 / np.maximum(np.arange(n + 1), 1)
    # Samples with equal rows and labels have equal gradients in every tree (same leaves, same
    # loss), so any order among them gives the same sums and the same sorts: one class.
    rows = np.concatenate([x.view(np.int32), y.astype(np.int64)[:, None].astype(np.int32)], axis=1)
    cls = np.unique(rows, axis=0, return_inverse=True)[1].reshape(n).astype(np.int32)
    root_ties = np.empty((d, n), np.int32)
    root_n_ties = np.zeros(d, np.int64)
    root_rev = np.zeros(d, np.bool_)
    for f in range(d):  # ties and rev depend on X only
        _, root_n_ties[f], root_rev[f] = _prescan(order0[f], xt[f], cls, np.zeros(n), 0, n, 0.0, inv,
                                                        root_ties[f])
    return Data(xt, order0, rank, inv, cls, root_ties, root_n_ties, root_rev)


def fit(x, y, *, n_estimators: int = 100, learning_rate: float = 0.1, max_depth: int = 3,
        random_state=None, n_threads: int = 1) -> GradientBoostedTrees:
    """Fit GradientBoostingClassifier(n_estimators=n_estimators,
    learning_rate=learning_rate, max_depth=max_depth, random_state=random_state)
    on x (n, d) (used as float32, like sklearn) and labels y (n,) (any
    sortable values; classes_ = np.unique(y)).  Returns a GradientBoostedTrees.

    random_state: int, np.random.RandomState or None (numpy's global one), as
    in sklearn; it decides ties between equally good splits.  n_threads: the
    trees of each stage are split over this many threads.  The kernels release
    the GIL, so separate fits also run in parallel threads (DCI's factors:
    that balances better).  The first call compiles the kernels (~20 s, then
    cached in __pycache__).  Raises ValueError for fewer than two classes, like
    sklearn, and for non-finite x."""
    x = _as_float32(x)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be 1-D with {x.shape[0]} labels, got shape {y.shape}")
    if max_depth < 1 or n_estimators < 1:
        raise ValueError("max_depth and n_estimators must be >= 1")
    classes, y_enc = np.unique(y, return_inverse=True)  # LabelEncoder
    n_classes = classes.shape[0]
    if n_classes < 2:
        raise ValueError(f"y contains {n_classes} class; at least 2 classes are required")
    n, d = x.shape
    K = 1 if n_classes == 2 else n_classes
    y_enc = y_enc.astype(np.float64)
    prior = np.bincount(y_enc.astype(np.int64), minlength=n_classes) / n  # DummyClassifier('prior')
    if isinstance(random_state, np.random.RandomState):
        rng = random_state
    elif random_state is None:
        rng = np.random.mtrand._rand  # numpy's global RandomState, as sklearn's check_random_state
    else:
        rng = np.random.RandomState(random_state)
    # Splitter.init draws one seed per tree, in fitting order.
    seeds = np.array([[rng.randint(0, RAND_R_MAX) for _ in range(K)] for _ in range(n_estimators)])

    data = _data(x, y_enc)
    shape = (n_estimators, K, 2 ** (max_depth + 1) - 1)  # max_nodes: a full binary tree
    trees = Trees(np.zeros(shape, np.int64), np.zeros(shape), np.full(shape, TREE_LEAF, np.int64),
                  np.full(shape, TREE_LEAF, np.int64), np.zeros(shape), np.zeros(shape), np.zeros(shape))
    node_count = np.zeros((n_estimators, K), np.int64)
    importances = np.zeros((n_estimators, K, d))
    factor = (K - 1) / K if K > 1 else 1.0  # sklearn's (K-1)/K multinomial leaf factor

    raw = np.ascontiguousarray(_init_raw(prior, n).T)  # (K, n): one row per tree of a stage
    neg_g, neg_g_t = np.empty((K, n)), np.empty((n, K))  # the stage's gradients, by tree and by sample
    n_threads = max(1, min(n_threads, K))
    groups = np.array_split(np.arange(K), n_threads)  # consecutive trees per thread
    workspaces = [_workspace(n, d, len(ks)) for ks in groups]

    def stage(i, t):
        _fit_trees(groups[t], data, workspaces[t], neg_g, neg_g_t, y_enc, seeds[i], max_depth, learning_rate,
                   factor, raw, Trees(*(a[i] for a in trees)), node_count[i], importances[i])

    with ThreadPoolExecutor(n_threads) if n_threads > 1 else _Serial() as pool:
        for i in range(n_estimators):
            _neg_gradient(raw, y_enc, neg_g, neg_g_t)
            list(pool.map(lambda t, i=i: stage(i, t), range(n_threads)))
    train_raw = raw[0] if K == 1 else raw.T
    return GradientBoostedTrees(classes, prior, learning_rate, max_depth, trees, node_count, importances, train_raw)


def warm_up() -> None:
    """Compile the kernels (first use after installing, about 20 s) or load them from the cache
    (a fraction of a second) with a tiny fit and predict, two and three classes: the README's way to
    pay the compile ahead of the first evaluation."""
    x = np.random.RandomState(0).randn(40, 3).astype(np.float32)
    for n_classes in (2, 3):
        y = np.arange(40) % n_classes
        fit(x, y, n_estimators=2, random_state=0).predict(x)


class _Serial:
    """Stand-in for a thread pool when n_threads == 1."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)
