"""Retrieval quality: recall@5 of hybrid search (vector + BM25) against vector-only, with the real MiniLM.

The corpus is built here: 100 fictional countries with rare, made-up names (so the model has never seen them),
two paragraphs each (geography; economy and history) in shared templates, plus 30 distractors that mention
two countries in passing or talk about capitals and trade in general. Queries ask for one fact each, some
naming the country, some naming only a rare fact (a city, a currency) and some paraphrased; each has one
paragraph that answers it. This is the case hybrid retrieval exists for: templated paragraphs embed close
together, and the rare name that tells them apart is what BM25 weighs most.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from server.vector_stores.index import StoreIndex

SYLLABLES = ["zor", "vel", "quan", "thra", "mib", "ost", "kel", "dru", "yas", "pho", "rin", "gav", "lum",
             "tesh", "wex", "bal", "nir", "cos", "fen", "uth", "jad", "sk", "orm", "ply"]
REGIONS = ["northern highlands", "eastern archipelago", "southern desert", "western plains", "central valleys"]
FEATURES = ["glass bridges", "salt festivals", "terraced orchards", "ancient observatories", "singing caves",
            "copper domes", "floating markets", "winter lanterns"]
GOODS = ["amber", "wool", "rice", "tin", "silk", "olive oil", "timber", "dyes", "spices", "horses", "paper", "wine"]


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
        if name not in used:
            used.add(name)
            return name


def build_corpus(countries: int = 100):
    rng = random.Random(37)
    used: set[str] = set()
    facts = []
    for _ in range(countries):
        facts.append({"country": _name(rng, used, 3), "capital": _name(rng, used, 3), "river": _name(rng, used, 2),
                      "founder": _name(rng, used, 2) + " " + _name(rng, used, 3), "currency": _name(rng, used, 2),
                      "region": rng.choice(REGIONS), "feature": rng.choice(FEATURES),
                      "goods": rng.sample(GOODS, 2), "year": rng.randrange(900, 1900)})
    paragraphs, queries = [], []
    for n, f in enumerate(facts):
        geography = len(paragraphs)
        paragraphs.append(f"{f['country']} is a small country in the {f['region']}. Its capital is {f['capital']}, "
                          f"a city on the {f['river']} river, and the country is known for its {f['feature']}.")
        economy = len(paragraphs)
        paragraphs.append(f"The economy of {f['country']} depends on exports of {f['goods'][0]} and "
                          f"{f['goods'][1]}. The state was founded in {f['year']} by {f['founder']}, and its "
                          f"currency is the {f['currency']}.")
        asks = [(f"What is the capital of {f['country']}?", geography),
                (f"Which river flows through the capital of {f['country']}?", geography),
                (f"Who founded {f['country']}?", economy),
                (f"Which country uses the {f['currency']} as its money?", economy),
                (f"{f['capital']} is the capital of which nation?", geography),
                (f"What goods does {f['country']} sell abroad?", economy)]
        queries += asks[n % 2::2]  # three kinds of question per country, all six kinds over the corpus
    for i in range(30):
        a, b = rng.sample(facts, 2)
        paragraphs.append(
            f"Travellers often confuse {a['country']} with {b['country']}, though their food and music differ."
            if i % 2 else f"Many capitals grew on rivers; trade in {rng.choice(GOODS)} made old cities rich.")
    return paragraphs, queries


def rank_metrics(index: StoreIndex, query_vectors, queries, **options) -> tuple[float, float]:
    """(recall@5, mean reciprocal rank within the top 10)."""
    found, reciprocal = 0, 0.0
    for vector, (text, answer) in zip(query_vectors, queries):
        positions = [hit.position for hit in index.search(vector, text, 10, **options)]
        found += answer in positions[:5]
        reciprocal += 1 / (positions.index(answer) + 1) if answer in positions else 0.0
    return found / len(queries), reciprocal / len(queries)


@pytest.fixture(scope="module")
def embedded(minilm_dir):
    from sentence_transformers import SentenceTransformer

    paragraphs, queries = build_corpus()
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    started = time.perf_counter()
    vectors = model.encode(paragraphs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    query_vectors = model.encode([q for q, _ in queries], batch_size=64, normalize_embeddings=True,
                                 convert_to_numpy=True)
    print(f"\nembedded {len(paragraphs)} paragraphs and {len(queries)} queries in "
          f"{time.perf_counter() - started:.1f} s")
    index = StoreIndex(vectors.astype(np.float32), paragraphs, [{} for _ in paragraphs])
    return index, query_vectors, queries


def test_hybrid_recall_at_5_is_at_least_vector_only(embedded):
    index, query_vectors, queries = embedded
    vector, vector_mrr = rank_metrics(index, query_vectors, queries, hybrid=False)
    weighted, weighted_mrr = rank_metrics(index, query_vectors, queries, hybrid=True, fusion="weighted")
    rrf, rrf_mrr = rank_metrics(index, query_vectors, queries, hybrid=True, fusion="rrf")
    print(f"{len(queries)} queries, recall@5 / MRR@10: vector-only {vector:.3f} / {vector_mrr:.3f}, "
          f"hybrid weighted {weighted:.3f} / {weighted_mrr:.3f}, hybrid rrf {rrf:.3f} / {rrf_mrr:.3f}")
    assert len(index) >= 200 and len(queries) >= 200
    assert weighted >= vector and rrf >= vector
    # Both fusions find nearly every answer in the top 5; weighted ranks it first far more often, hence the
    # default (index.py).
    assert weighted_mrr >= rrf_mrr


def test_default_search_is_the_weighted_hybrid(embedded):
    index, query_vectors, queries = embedded
    for vector, (text, _) in zip(query_vectors[:20], queries[:20]):
        assert index.search(vector, text, 5) == index.search(vector, text, 5, hybrid=True, fusion="weighted")


def test_scores_are_in_unit_interval_and_threshold_filters_on_them(embedded):
    index, query_vectors, queries = embedded
    for fusion in ("weighted", "rrf"):
        hits = index.search(query_vectors[0], queries[0][0], 50, fusion=fusion)
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    hits = index.search(query_vectors[0], queries[0][0], 50)
    threshold = hits[10].score
    kept = index.search(query_vectors[0], queries[0][0], 50, score_threshold=threshold)
    assert kept == [h for h in hits if h.score >= threshold] and len(kept) >= 11
