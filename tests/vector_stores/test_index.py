"""The store index: exact vector search, BM25, their fusion, filters, thresholds and ordering."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from server.vector_stores.filters import parse_filters
from server.vector_stores.index import VECTOR_WEIGHT, Hit, KeywordIndex, StoreIndex


def unit(*values) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def random_index(n: int = 2000, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"chunk {i} of file {i % 7} about {'apples' if i % 5 == 0 else 'pears'}" for i in range(n)]
    attributes = [{"file": i % 7, "even": i % 2 == 0} for i in range(n)]
    return StoreIndex(vectors, texts, attributes), vectors, rng


def test_vector_only_is_exact_cosine_top_k():
    index, vectors, rng = random_index()
    for _ in range(5):
        query = rng.standard_normal(32).astype(np.float32)
        cosine = vectors @ (query / np.linalg.norm(query))
        hits = index.search(query * 3.0, "ignored words", 10, hybrid=False)  # the query need not be unit length
        assert [h.position for h in hits] == list(np.argsort(-cosine)[:10])
        assert [h.score for h in hits] == pytest.approx([max(0.0, float(cosine[h.position])) for h in hits], abs=1e-6)


def test_negative_cosine_scores_zero():
    index = StoreIndex(np.stack([unit(1, 0), unit(-1, 0)]), ["x", "y"], [{}, {}])
    assert index.search(unit(1, 0), "", 2, hybrid=False) == [Hit(0, pytest.approx(1.0)), Hit(1, 0.0)]


def test_bm25_keyword_score_is_the_share_of_query_idf_matched():
    keywords = KeywordIndex(["red fox jumps", "red dog sits", "blue cat naps", "red red red"])
    scores = keywords.scores("Red FOX")
    # "fox jumps red": both query words once, average length (3 words): exactly 1.
    assert scores[0] == pytest.approx(1.0)
    idf_red, idf_fox = math.log(1 + (4 - 3 + 0.5) / 3.5), math.log(1 + (4 - 1 + 0.5) / 1.5)
    assert scores[1] == pytest.approx(idf_red / (idf_red + idf_fox), rel=1e-5)
    assert scores[2] == 0.0
    assert scores[1] < scores[3] < 2 * scores[1]  # tf saturates
    assert keywords.scores("zebra") is None and keywords.scores("") is None
    # An unknown query word still counts in the denominator: half the query is unmatched everywhere.
    assert keywords.scores("fox zebra")[0] < 0.6


def test_hybrid_score_is_the_weighted_sum():
    vectors = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    index = StoreIndex(vectors, ["alpha beta", "gamma delta", "beta gamma"], [{}, {}, {}])
    query = unit(0, 1, 0)
    keyword = index.keywords.scores("alpha")
    hits = index.search(query, "alpha", 3)
    expected = {i: VECTOR_WEIGHT * max(0.0, float(vectors[i] @ query)) + (1 - VECTOR_WEIGHT) * float(keyword[i])
                for i in range(3)}
    assert {h.position: h.score for h in hits} == pytest.approx(expected, abs=1e-6)
    assert [h.position for h in hits] == sorted(expected, key=lambda i: -expected[i])


def test_a_rare_keyword_lifts_its_chunk_over_a_closer_vector():
    vectors = np.stack([unit(1, 0.1), unit(1, 0.3)])
    index = StoreIndex(vectors, ["general notes on the project", "the Zorvania ledger"], [{}, {}])
    assert index.search(unit(1, 0), "Zorvania", 1, hybrid=False)[0].position == 0
    assert index.search(unit(1, 0), "Zorvania", 1)[0].position == 1


def test_query_without_known_words_falls_back_to_vector_scores():
    index, _, rng = random_index(300)
    query = rng.standard_normal(32).astype(np.float32)
    assert index.search(query, "zebra quagga", 5) == index.search(query, "anything", 5, hybrid=False)


def test_filter_restricts_and_its_mask_is_cached():
    index, _, rng = random_index()
    query = rng.standard_normal(32).astype(np.float32)
    raw = {"type": "and", "filters": [{"type": "eq", "key": "file", "value": 3},
                                      {"type": "eq", "key": "even", "value": True}]}
    for fusion in ("weighted", "rrf"):
        hits = index.search(query, "apples", 20, filter=parse_filters(raw), fusion=fusion)
        assert len(hits) == 20 and all(h.position % 7 == 3 and h.position % 2 == 0 for h in hits)
    assert len(index._masks) == 1
    nothing = parse_filters({"type": "eq", "key": "file", "value": 99})
    assert index.search(query, "apples", 5, filter=nothing) == []


def test_threshold_keeps_scores_at_or_above_it():
    index, _, rng = random_index()
    query = rng.standard_normal(32).astype(np.float32)
    hits = index.search(query, "apples", 50)
    cut = hits[20].score
    assert index.search(query, "apples", 50, score_threshold=cut) == [h for h in hits if h.score >= cut]
    assert index.search(query, "apples", 50, score_threshold=1.0) == []


def test_ties_are_ordered_by_position_and_k_bounds_the_list():
    index = StoreIndex(np.stack([unit(1, 0)] * 6), ["same text"] * 6, [{}] * 6)
    assert [h.position for h in index.search(unit(1, 0), "same", 4)] == [0, 1, 2, 3]
    assert [h.position for h in index.search(unit(1, 0), "same", 50)] == [0, 1, 2, 3, 4, 5]
    assert index.search(unit(1, 0), "same", 0) == []


def test_rrf_scores_are_normalised_to_one_for_the_top_of_both_lists():
    vectors = np.stack([unit(1, 0), unit(0, 1), unit(1, 1)])
    index = StoreIndex(vectors, ["apple pie", "pear tart", "plum jam"], [{}, {}, {}])
    hits = index.search(unit(1, 0), "apple", 3, fusion="rrf")
    assert hits[0] == Hit(0, pytest.approx(1.0))
    assert all(0.0 <= h.score <= 1.0 for h in hits) and hits[1].score <= 0.5


def test_empty_index_and_mismatched_inputs():
    empty = StoreIndex(np.zeros((0, 4), np.float32), [], [])
    assert len(empty) == 0 and empty.search(np.ones(4), "anything", 5) == []
    with pytest.raises(ValueError):
        StoreIndex(np.zeros((2, 4), np.float32), ["one"], [{}, {}])


def test_concurrent_searches_agree():
    index, _, rng = random_index()
    queries = [rng.standard_normal(32).astype(np.float32) for _ in range(8)]
    raw = {"type": "eq", "key": "even", "value": False}
    expected = [index.search(q, "pears", 10, filter=parse_filters(raw)) for q in queries]
    results: dict[int, list] = {}

    def worker(i: int):
        results[i] = [index.search(q, "pears", 10, filter=parse_filters(raw)) for q in queries]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == expected for i in range(4))


def test_candidate_keyword_scores_equal_the_keyword_index():
    """pgvector's BM25 over a query's candidates (server/vector_stores/pgvector.py) counts only the query's words;
    its scores are KeywordIndex's over the same texts."""
    from server.vector_stores.pgvector import keyword_scores

    rng = np.random.default_rng(7)
    vocabulary = [f"w{i}" for i in range(300)] + ["the", "of", "Zorvania", "naïve", "東京"]
    texts = [" ".join(rng.choice(vocabulary, rng.integers(0, 80))) + ("." if i % 3 else ", THE end!")
             for i in range(120)]
    index = KeywordIndex(texts)
    for query in ["w1 w2 the", "zorvania", "W7, w7 w300", "nothing here", "", "東京 naïve of", "the"]:
        want, got = index.scores(query), keyword_scores(texts, query)
        assert (want is None) == (got is None), query
        if want is not None:
            assert got == pytest.approx(want, abs=1e-6), query
    assert keyword_scores([], "w1") is None
