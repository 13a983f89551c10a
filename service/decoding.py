"""Caption decoding over a one-step decoder: greedy and batched beam search (numpy only).

The decoder is a callback ``step(tokens, states) -> (log_probs, new_states)``:
``tokens`` int32 [rows] (the previous token of each row), every state an array
[rows, ...], ``log_probs`` [rows, vocabulary]. Only rows still growing a caption
are stepped, all samples' rows in one call. Between steps the states follow their
hypotheses (rows are gathered by parent), so a fixed per-sample context, such as
image features the step hands back unchanged, stays with its sample too.

Each sample has its own beam size (0: a padding sample, which gets nothing and is
never stepped) and its own ``max_length`` in words. A hypothesis is finished when
it emits the end token, whose log-prob counts; one that reaches ``max_length``
words must end at the next step (``ended`` stays False unless the end token was
the model's own first choice there), so every score is the log-prob of a whole
caption and scores of different lengths rank fairly. The padding, start and
unknown tokens are never emitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

Step = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]
STAY = -1  # a candidate that is a finished hypothesis kept as it is


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    start: int
    end: int
    banned: tuple[int, ...]  # never emitted: padding, start, unknown


@dataclasses.dataclass(frozen=True)
class Captions:
    """Decoded captions, best first within each sample."""

    tokens: np.ndarray  # int32 [samples, beams, max_length]: word indices, -1 past the length
    lengths: np.ndarray  # int32 [samples, beams]: words, end token excluded
    log_probs: np.ndarray  # float64 [samples, beams]: -inf where a beam holds nothing
    ended: np.ndarray  # bool [samples, beams]: False where max_length cut the caption

    @classmethod
    def empty(cls, num_samples: int, num_beams: int, max_length: int) -> Captions:
        shape = (num_samples, num_beams)
        return cls(
            tokens=np.full((*shape, max_length), -1, np.int32),
            lengths=np.zeros(shape, np.int32),
            log_probs=np.full(shape, -np.inf),
            ended=np.zeros(shape, bool),
        )


def decode(
    step: Step,
    states: Sequence[np.ndarray],
    beam_sizes: np.ndarray,
    max_lengths: np.ndarray,
    special: SpecialTokens,
) -> Captions:
    """Greedy decoding when no sample asks for more than one beam (cheaper), else beam search."""
    if np.max(beam_sizes, initial=0) <= 1:
        return greedy(step, states, beam_sizes, max_lengths, special)
    return beam_search(step, states, beam_sizes, max_lengths, special)


def greedy(
    step: Step,
    states: Sequence[np.ndarray],
    beam_sizes: np.ndarray,
    max_lengths: np.ndarray,
    special: SpecialTokens,
) -> Captions:
    """The most likely allowed token at every step; samples of beam size 0 get nothing."""
    beam_sizes, max_lengths = _validated(states, beam_sizes, max_lengths)
    if beam_sizes.max(initial=0) > 1:
        raise ValueError("greedy decoding takes beam sizes of 0 or 1")
    captions = Captions.empty(len(beam_sizes), 1, int(max_lengths.max(initial=0)))
    rows = np.flatnonzero(beam_sizes > 0)  # the samples still decoding
    captions.log_probs[rows, 0] = 0.0
    tokens = np.full(len(rows), special.start, np.int32)
    states = [np.asarray(state)[rows] for state in states]
    while rows.size:
        log_probs, states = _checked_step(step, tokens, states)
        allowed = _allowed(log_probs, special)
        first_choice = allowed.argmax(axis=1)
        at_limit = captions.lengths[rows, 0] >= max_lengths[rows]
        chosen = np.where(at_limit, special.end, first_choice)
        captions.log_probs[rows, 0] += allowed[np.arange(len(rows)), chosen]
        done = chosen == special.end
        captions.ended[rows[done], 0] = first_choice[done] == special.end
        going = ~done
        rows, tokens = rows[going], chosen[going].astype(np.int32)
        captions.tokens[rows, 0, captions.lengths[rows, 0]] = tokens
        captions.lengths[rows, 0] += 1
        states = [np.asarray(state)[going] for state in states]
    return captions


def beam_search(
    step: Step,
    states: Sequence[np.ndarray],
    beam_sizes: np.ndarray,
    max_lengths: np.ndarray,
    special: SpecialTokens,
) -> Captions:
    """Each sample keeps its ``beam_size`` best hypotheses by cumulative log-prob.

    Every step, each unfinished hypothesis grows by one token and each finished one
    competes as it is; a sample's best ``beam_size`` candidates go on. Beams are
    padded to the batch's largest beam size; a sample's unused beams hold -inf.
    """
    beam_sizes, max_lengths = _validated(states, beam_sizes, max_lengths)
    width = max(1, int(beam_sizes.max(initial=0)))
    captions = Captions.empty(len(beam_sizes), width, int(max_lengths.max(initial=0)))
    finished = np.zeros(captions.ended.shape, bool)
    live = np.flatnonzero(beam_sizes > 0)
    captions.log_probs[live, 0] = 0.0  # one start hypothesis; the first step spreads it out
    slots = live * width  # the flattened (sample, beam) that each stepped row grows
    tokens = np.full(len(slots), special.start, np.int32)
    states = [np.asarray(state)[live] for state in states]
    while slots.size:
        log_probs, states = _checked_step(step, tokens, states)
        candidates = _candidates(captions, finished, slots, log_probs, max_lengths, special)
        slots, parent_rows, tokens = _select(
            captions, finished, slots, candidates, beam_sizes, special.end
        )
        states = [np.asarray(state)[parent_rows] for state in states]
    return captions


@dataclasses.dataclass(frozen=True)
class _Candidates:
    scores: np.ndarray  # [samples, beams * per_beam]
    tokens: np.ndarray  # [samples, beams * per_beam]: the token appended, or STAY
    ends_by_choice: np.ndarray  # [samples * beams]: an end token here is the model's own choice
    per_beam: int


def _candidates(captions, finished, slots, log_probs, max_lengths, special) -> _Candidates:
    """Per beam: the best ``beams`` next tokens of an unfinished one, or a finished one as is."""
    num_samples, width = captions.log_probs.shape
    allowed = _allowed(log_probs, special)
    ends_by_choice = np.ones(num_samples * width, bool)
    at_limit = captions.lengths.reshape(-1)[slots] >= max_lengths[slots // width]
    ends_by_choice[slots] = ~at_limit | (allowed.argmax(axis=1) == special.end)
    end_log_probs = allowed[at_limit, special.end]
    allowed[at_limit] = -np.inf
    allowed[at_limit, special.end] = end_log_probs
    top = _best(allowed, min(width, allowed.shape[1]))
    per_beam = top.shape[1] + 1
    flat_scores = captions.log_probs.reshape(-1)
    scores = np.full((num_samples * width, per_beam), -np.inf)
    tokens = np.full((num_samples * width, per_beam), STAY, np.int64)
    scores[slots, :-1] = flat_scores[slots, np.newaxis] + np.take_along_axis(allowed, top, 1)
    tokens[slots, :-1] = top
    done = finished.reshape(-1)
    scores[done, -1] = flat_scores[done]
    return _Candidates(
        scores.reshape(num_samples, -1), tokens.reshape(num_samples, -1), ends_by_choice, per_beam
    )


def _select(captions, finished, slots, candidates: _Candidates, beam_sizes, end: int):
    """Keep each sample's best candidates as its beams.

    Returns the rows to step next (flattened slots), their parents' rows in this
    step, and their tokens.
    """
    num_samples, width = captions.log_probs.shape
    best = _best(candidates.scores, width)
    scores = np.take_along_axis(candidates.scores, best, 1)
    tokens = np.take_along_axis(candidates.tokens, best, 1)
    parents = np.arange(num_samples)[:, np.newaxis] * width + best // candidates.per_beam
    for array in (captions.tokens, captions.lengths, captions.ended, finished):
        array[:] = array.reshape(num_samples * width, *array.shape[2:])[parents]
    captions.log_probs[:] = scores
    unused = (np.arange(width) >= beam_sizes[:, np.newaxis]) | ~np.isfinite(scores)
    ends = ~unused & (tokens == end)
    finished[ends] = True
    captions.ended[ends] = candidates.ends_by_choice[parents[ends]]
    grows = ~unused & (tokens != STAY) & (tokens != end)
    samples, beams = np.nonzero(grows)
    captions.tokens[samples, beams, captions.lengths[samples, beams]] = tokens[samples, beams]
    captions.lengths[samples, beams] += 1
    captions.tokens[unused] = -1
    captions.lengths[unused] = 0
    captions.log_probs[unused] = -np.inf
    captions.ended[unused] = finished[unused] = False
    row_of_slot = np.full(num_samples * width, -1)
    row_of_slot[slots] = np.arange(len(slots))
    return np.flatnonzero(grows), row_of_slot[parents[grows]], tokens[grows].astype(np.int32)


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Column indices of each row's ``count`` highest scores, best first.

    Ties go to the lower index, as ``argmax`` does, so beam size 1 is greedy exactly.
    """
    if count == 1:
        return scores.argmax(axis=1)[:, np.newaxis]
    if scores.shape[1] > count:
        top = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((top, -np.take_along_axis(scores, top, 1)), axis=1)
    return np.take_along_axis(top, order, 1)


def _allowed(log_probs: np.ndarray, special: SpecialTokens) -> np.ndarray:
    """The step's log-probs as float64, banned tokens at -inf."""
    allowed = np.array(log_probs, np.float64)
    allowed[:, list(special.banned)] = -np.inf
    return allowed


def _checked_step(step: Step, tokens: np.ndarray, states: list[np.ndarray]):
    log_probs, new_states = step(tokens, states)
    if np.ndim(log_probs) != 2 or len(log_probs) != len(tokens):
        raise ValueError(
            f"the decoder step returned log-probs of shape {np.shape(log_probs)} "
            f"for {len(tokens)} rows"
        )
    return log_probs, list(new_states)


def _validated(states, beam_sizes, max_lengths) -> tuple[np.ndarray, np.ndarray]:
    beam_sizes = np.asarray(beam_sizes, np.int64)
    max_lengths = np.asarray(max_lengths, np.int64)
    if beam_sizes.ndim != 1 or beam_sizes.shape != max_lengths.shape:
        raise ValueError("beam_sizes and max_lengths need one value per sample")
    if any(len(state) != len(beam_sizes) for state in states):
        raise ValueError("every state needs one row per sample")
    if (beam_sizes < 0).any() or (max_lengths[beam_sizes > 0] < 1).any():
        raise ValueError("beam sizes must be at least 0, and max_length at least 1")
    return beam_sizes, max_lengths
