"""The native engine (`engine: transformers` in a config): transformers model definitions, continuous
batching over a paged KV cache, and batched sampling, all in this process.

- engine.py: the async front, the worker thread and fault supervision; the step is three calls:
  `scheduler.schedule()`, `runner.run(chunks)` (the forward pass and the sampled tokens), and
  `scheduler.postprocess(...)` (append, finish, admit waiting choices, free blocks); then it emits.
- scheduler.py, block_manager.py, sequence.py: plain Python over token ids and block ids.
- model_runner.py (the KV tensors, the packed forward, sampling), cpu_linears.py, sampler.py.

What the native engine shares with the vLLM engine (the tokenizer front, a choice's text output and
its detokenizer) lives beside the engine contract in engines/, not here."""
