"""Greedy and beam-search decoding against synthetic numpy decoders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service import decoding

PAD, START, END, UNK = 0, 1, 2, 3
WORDS = [4, 5, 6]
VOCABULARY_SIZE = 7
SPECIAL = decoding.SpecialTokens(start=START, end=END, banned=(PAD, START, UNK))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class ChainDecoder:
    """Per sample, a Markov chain whose transitions change with the position.

    The states are the sample's id (a fixed context) and the position (a state that
    changes every step): the log-probs of the next token are
    ``tables[sample, position, previous token]``. Every call is recorded.
    """

    def __init__(self, num_samples: int, seed: int = 0, positions: int = 6, scale: float = 2.0):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0, scale, (num_samples, positions, VOCABULARY_SIZE, VOCABULARY_SIZE))
        self.tables = log_softmax(logits).astype(np.float32)
        self.calls: list[np.ndarray] = []  # the samples stepped, per call

    def initial_states(self, samples=None) -> list[np.ndarray]:
        samples = np.arange(len(self.tables)) if samples is None else np.asarray(samples)
        return [samples, np.zeros(len(samples), np.int64)]

    def __call__(self, tokens, states):
        samples, positions = states
        self.calls.append(samples.copy())
        last = len(self.tables[0]) - 1
        log_probs = self.tables[samples, np.minimum(positions, last), tokens]
        return log_probs, [samples, positions + 1]

    def score(self, sample: int, words: tuple[int, ...]) -> float:
        """The log-prob of ``words`` then the end token, straight from the tables."""
        total, previous = 0.0, START
        for position, token in enumerate([*words, END]):
            position = min(position, len(self.tables[0]) - 1)
            total += float(self.tables[sample, position, previous, token])
            previous = token
        return total


def captions_of(found: decoding.Captions, sample: int) -> list[tuple[tuple[int, ...], float, bool]]:
    """(words, log_prob, ended) of a sample's beams that hold a caption, best first."""
    return [
        (tuple(found.tokens[sample, beam, : found.lengths[sample, beam]]),
         float(found.log_probs[sample, beam]), bool(found.ended[sample, beam]))
        for beam in range(found.log_probs.shape[1])
        if np.isfinite(found.log_probs[sample, beam])
    ]  # fmt: skip


def test_beam_size_one_is_exactly_greedy():
    decoder = ChainDecoder(num_samples=20, seed=1)
    max_lengths = np.arange(20) % 5 + 1
    ones = np.ones(20, int)
    greedy = decoding.greedy(decoder, decoder.initial_states(), ones, max_lengths, SPECIAL)
    beam = decoding.beam_search(decoder, decoder.initial_states(), ones, max_lengths, SPECIAL)
    for field in ("tokens", "lengths", "log_probs", "ended"):
        assert np.array_equal(getattr(greedy, field), getattr(beam, field)), field
    assert greedy.ended.any() and not greedy.ended.all()  # both ways of stopping happen
    for sample in range(20):
        [(words, log_prob, _)] = captions_of(greedy, sample)
        assert log_prob == pytest.approx(decoder.score(sample, words), abs=1e-5)


def test_a_wide_beam_finds_the_best_captions_of_an_exhaustive_search():
    max_length, num_samples = 3, 4
    decoder = ChainDecoder(num_samples, seed=2)
    every_caption = [w for n in range(max_length + 1) for w in itertools.product(WORDS, repeat=n)]
    width = len(every_caption)  # 1 + 3 + 9 + 27: nothing is ever pruned
    found = decoding.beam_search(
        decoder, decoder.initial_states(), np.full(num_samples, width),
        np.full(num_samples, max_length), SPECIAL,
    )  # fmt: skip
    for sample in range(num_samples):
        ranked = sorted(every_caption, key=lambda words: -decoder.score(sample, words))
        got = captions_of(found, sample)
        assert [words for words, _, _ in got] == ranked
        expected = [decoder.score(sample, words) for words in ranked]
        assert [log_prob for _, log_prob, _ in got] == pytest.approx(expected, abs=1e-5)
    # A narrower beam still returns its captions best first.
    narrow = decoding.beam_search(
        decoder, decoder.initial_states(), np.full(num_samples, 3),
        np.full(num_samples, max_length), SPECIAL,
    )  # fmt: skip
    for sample in range(num_samples):
        log_probs = [log_prob for _, log_prob, _ in captions_of(narrow, sample)]
        assert len(log_probs) == 3 and log_probs == sorted(log_probs, reverse=True)
        best = max(every_caption, key=lambda words: decoder.score(sample, words))
        assert log_probs[0] <= decoder.score(sample, best) + 1e-6


def forced_decoder(next_token: dict[int, int], num_samples: int = 1) -> ChainDecoder:
    """A chain that almost surely follows ``next_token`` (previous -> next)."""
    decoder = ChainDecoder(num_samples, scale=0.1)
    for previous, token in next_token.items():
        decoder.tables[:, :, previous, token] = -0.01
    return decoder


@pytest.mark.parametrize("decode", [decoding.greedy, decoding.beam_search])
def test_decoding_stops_at_the_end_token(decode):
    decoder = forced_decoder({START: 4, 4: 5, 5: END})
    found = decode(decoder, decoder.initial_states(), [1], [8], SPECIAL)
    assert captions_of(found, 0)[0][0::2] == ((4, 5), True)
    assert len(decoder.calls) == 3  # two words and the end, then no more steps


@pytest.mark.parametrize("decode", [decoding.greedy, decoding.beam_search])
def test_decoding_stops_at_max_length(decode):
    decoder = forced_decoder({START: 4, 4: 5, 5: 4})  # never ends of its own accord
    found = decode(decoder, decoder.initial_states(), [1], [3], SPECIAL)
    [(words, log_prob, ended)] = captions_of(found, 0)
    assert (words, ended) == ((4, 5, 4), False)
    # The caption is forced to end after max_length words; its log-prob counts the end.
    assert log_prob == pytest.approx(decoder.score(0, words), abs=1e-5)
    assert len(decoder.calls) == 4


def test_a_caption_of_exactly_max_length_words_can_end():
    decoder = forced_decoder({START: 4, 4: 5, 5: END})
    found = decoding.greedy(decoder, decoder.initial_states(), [1], [2], SPECIAL)
    assert captions_of(found, 0)[0][0::2] == ((4, 5), True)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_banned_tokens_are_never_emitted(beam_size):
    decoder = ChainDecoder(num_samples=6, seed=3)
    decoder.tables[:, :, :, UNK] = -0.001  # the unknown token is by far the most likely
    decoder.tables[:, :, :, PAD] = -0.002
    decoder.tables[:, :, :, START] = -0.003
    found = decoding.decode(
        decoder, decoder.initial_states(), np.full(6, beam_size), np.full(6, 5), SPECIAL
    )
    for sample in range(6):
        for words, _, _ in captions_of(found, sample):
            assert set(words) <= set(WORDS)


def test_mixed_beam_sizes_and_lengths_decode_each_sample_as_if_alone():
    beam_sizes = np.array([1, 3, 0, 8, 2, 5, 1])
    max_lengths = np.array([4, 2, 0, 5, 3, 1, 6])
    decoder = ChainDecoder(len(beam_sizes), seed=4)
    together = decoding.decode(decoder, decoder.initial_states(), beam_sizes, max_lengths, SPECIAL)
    assert together.log_probs.shape == (len(beam_sizes), 8)
    for sample, (beam_size, max_length) in enumerate(zip(beam_sizes, max_lengths, strict=True)):
        alone = decoding.decode(
            decoder, decoder.initial_states([sample]), [beam_size], [max_length], SPECIAL
        )
        assert captions_of(together, sample) == captions_of(alone, 0)
        possible = sum(len(WORDS) ** n for n in range(max_length + 1))
        assert len(captions_of(alone, 0)) == min(beam_size, possible)
        assert all(len(words) <= max_length for words, _, _ in captions_of(alone, 0))


def test_padding_samples_produce_nothing_and_are_never_stepped():
    beam_sizes = np.array([0, 2, 0, 0])
    decoder = ChainDecoder(len(beam_sizes), seed=5)
    found = decoding.beam_search(
        decoder, decoder.initial_states(), beam_sizes, np.array([0, 4, 0, 0]), SPECIAL
    )
    assert all(set(samples) == {1} for samples in decoder.calls)
    for sample in (0, 2, 3):
        assert captions_of(found, sample) == []
        assert (found.tokens[sample] == -1).all() and (found.lengths[sample] == 0).all()
    assert len(captions_of(found, 1)) == 2
    decoder.calls.clear()
    nothing = decoding.decode(decoder, decoder.initial_states(), np.zeros(4, int), np.zeros(4, int),
                              SPECIAL)  # fmt: skip
    assert decoder.calls == [] and not np.isfinite(nothing.log_probs).any()


def test_finished_beams_are_not_stepped_again():
    decoder = ChainDecoder(num_samples=3, seed=6)
    decoding.beam_search(decoder, decoder.initial_states(), [4, 4, 4], [6, 6, 6], SPECIAL)
    rows = [len(samples) for samples in decoder.calls]
    assert rows[0] == 3  # one start hypothesis per sample
    assert max(rows) <= 12 and len(rows) <= 7


def test_bad_arguments_are_refused():
    decoder = ChainDecoder(num_samples=2)
    with pytest.raises(ValueError, match="greedy"):
        decoding.greedy(decoder, decoder.initial_states(), [1, 2], [3, 3], SPECIAL)
    with pytest.raises(ValueError, match="one row per sample"):
        decoding.beam_search(decoder, decoder.initial_states([0]), [1, 2], [3, 3], SPECIAL)
    with pytest.raises(ValueError, match="max_length"):
        decoding.beam_search(decoder, decoder.initial_states(), [1, 2], [3, 0], SPECIAL)
