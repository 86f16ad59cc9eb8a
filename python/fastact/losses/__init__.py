"""The losses (and softmax) of fastact.functional on plain tensors: argument
checks, row layout and reductions around the fused row kernels
(cross_entropy, softmax, mse), the chunked linear heads that never hold the
(tokens, vocab) logits (linear_ce, posttrain), and the vocabulary-parallel
cross-entropy over a process group (vocab_parallel). DTensor inputs go
through ``fastact.distributed.losses``, which calls these."""
