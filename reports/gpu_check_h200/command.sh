# Machine: one NVIDIA H200 (torch 2.11.0+cu130, transformers 5.17.0), 16 CPU cores; the optuna
# wheels carried in; code at commit 8d7a869 (before the flag renames; the flags used are unchanged).
# GPU_CHECK_SRC: a folder holding smollm2-135m's config.json and tokenizer files.
GPU_CHECK_SRC=.gpu python3 scripts/benchmarks/gpu_check.py 2>&1 | tee $OUT/check.log
# What it showed (check.log): extraction with dtype auto ran bf16 on CUDA; CUDA fp32 features vs CPU
# fp32 max relative difference 7.0e-04, bf16 min cosine 0.99988; a torchrun (1 rank, nccl) cache was
# byte-identical to the single-process one; train (4 trials x 3 folds) 177.8 s of which the head
# search on CPU is nearly all (the head trains on the CPU even on a GPU machine); eval 7.0 s; the
# guard on CUDA agreed with the same guard on CPU on 64/64 decisions (max |score diff| 0.026, bf16).
