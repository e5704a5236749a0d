"""The continuous-batching core, in plain Python over token ids and block ids: sequences, the paged
KV block manager with prefix caching, and the scheduler. No tensors here; the model runner owns those."""
