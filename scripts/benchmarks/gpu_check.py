"""GPU check: extraction (bf16 picked automatically, fp32), CPU-vs-CUDA feature agreement, torchrun
sharding, train, eval and serving on CUDA, with a random-weight model of smollm2-135m's shape on
synthetic rows (so it needs neither the weights nor the datasets on the GPU machine).

    GPU_CHECK_SRC=<folder with smollm2's config.json + tokenizer files> python scripts/gpu_check.py

GPU_CHECK_SRC defaults to the converted backbone in the SIREN cache. GPU_CHECK_DEV=cpu and
GPU_CHECK_SCALE=0.05 give a small CPU dry run. Prints what it measured; writes under $OUT.
"""
import glob, json, os, random, shutil, subprocess, sys, time
import numpy as np, torch, transformers

SRC = os.environ.get("GPU_CHECK_SRC", os.path.expanduser("~/.cache/siren/backbones/smollm2-135m"))

TMP = os.environ.get("GPU_CHECK_TMP") or __import__("tempfile").mkdtemp(prefix="siren_gpu_check_")  # scratch: model, data, caches, run
OUT = os.environ.get("OUT", os.path.join(TMP, "out"))
DEV = os.environ.get("GPU_CHECK_DEV", "cuda")
SCALE = float(os.environ.get("GPU_CHECK_SCALE", "1"))
os.makedirs(OUT, exist_ok=True)
if DEV == "cuda":
    print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0),
          "bf16 supported:", torch.cuda.is_bf16_supported(), flush=True)
cfg = json.load(open(os.path.join(SRC, "config.json"))); cfg.pop("quantization_config", None)
config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
if SCALE < 1:
    cfg.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    config = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(config)
os.makedirs(f"{TMP}/smol", exist_ok=True)
model.save_pretrained(f"{TMP}/smol")
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(os.path.join(SRC, f), f"{TMP}/smol/")
del model

rng = random.Random(0)
words = "the of and to a in is you that it for on with as are this be at or have from by not but what all".split()
bad = "bomb poison hack kill".split()
def row(i, split, ds):
    n = rng.choice([5, 20, 60, 150, 300])
    ws = [rng.choice(words) for _ in range(n)]
    lab = rng.random() < 0.4
    if lab:
        ws[rng.randrange(n)] = rng.choice(bad)
    t = " ".join(ws)
    return {"id": f"{ds}-{split}-{i}", "text": t, "label": int(lab), "prompt": t, "response": None}
for ds, splits in {"toxic_chat": {"train": int(1500*SCALE), "test": int(500*SCALE)}, "beavertails": {"test": int(1500*SCALE)}}.items():
    os.makedirs(f"{TMP}/data/{ds}", exist_ok=True)
    for split, n in splits.items():
        with open(f"{TMP}/data/{ds}/{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(row(i, split, ds)) + "\n")

def sh(args, **kw):
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "siren", *args], capture_output=True, text=True, **kw)
    dt = time.time() - t
    tail = (r.stdout + r.stderr)[-1500:]
    print(f"$ siren {' '.join(args)}\n  rc={r.returncode} {dt:.1f}s\n  ..." + tail.replace("\r", "\n")[-700:], flush=True)
    return r.returncode, dt

common = ["--model", f"{TMP}/smol", "--datasets", "toxic_chat", "beavertails", "--data_dir", f"{TMP}/data"]
rc, t_bf16 = sh(["extract", *common, "--device", DEV, "--cache_dir", f"{TMP}/c_bf16"])
rc, t_fp32 = sh(["extract", *common, "--device", DEV, "--dtype", "float32", "--cache_dir", f"{TMP}/c_fp32"])
rc, _ = sh(["extract", *common, "--device", "cpu", "--dtype", "float32", "--cache_dir", f"{TMP}/c_cpu",
            "--splits", "test", "--max_per_split", str(max(20, int(200*SCALE)))])
def arrays(root):
    return {p.split(root)[1]: np.load(p, mmap_mode="r") for p in glob.glob(f"{root}/**/features.npy", recursive=True)}
a_bf, a_32, a_cpu = arrays(f"{TMP}/c_bf16"), arrays(f"{TMP}/c_fp32"), arrays(f"{TMP}/c_cpu")
print("caches:", {k: v.shape for k, v in a_bf.items()})
for k, v in a_cpu.items():
    ids_cpu = np.load(os.path.dirname(f"{TMP}/c_cpu{k}") + "/ids.npy", allow_pickle=False)
    for name, other, root in (("cuda fp32", a_32, f"{TMP}/c_fp32"), ("cuda bf16", a_bf, f"{TMP}/c_bf16")):
        match = [kk for kk in other if kk.split("/")[-3:-1] == k.split("/")[-3:-1] or os.path.dirname(kk).endswith(os.path.dirname(k).split("/")[-1])]
        for kk in other:
            ids_o = np.load(os.path.dirname(f"{root}{kk}") + "/ids.npy", allow_pickle=False)
            common_ids, ia, ib = np.intersect1d(ids_cpu, ids_o, return_indices=True)
            if len(common_ids) < 10: continue
            x, y = np.asarray(v[ia], np.float32), np.asarray(other[kk][ib], np.float32)
            rel = np.abs(x - y).max() / (np.abs(x).max() + 1e-9)
            cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-9)
            print(f"cpu fp32 vs {name} on {len(common_ids)} rows: max rel diff {rel:.2e}, min cosine {cos.min():.6f}", flush=True)
env = dict(os.environ)
r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "1", "-m", "siren", "extract", *common, "--device", DEV,
                    "--cache_dir", f"{TMP}/c_tr"], capture_output=True, text=True)
print("torchrun rc", r.returncode, (r.stdout + r.stderr)[-600:].replace("\r", "\n"), flush=True)
a_tr = arrays(f"{TMP}/c_tr")
for k in a_bf:
    if k in a_tr:
        print("torchrun vs single", k, "identical" if np.array_equal(a_bf[k], a_tr[k]) else f"max diff {np.abs(np.asarray(a_bf[k], np.float32)-np.asarray(a_tr[k], np.float32)).max():.3e}")
rc, t_train = sh(["train", *common, "--device", DEV, "--n_trials", "4", "--n_folds", "3", "--cache_dir", f"{TMP}/c_bf16",
                  "--out_dir", f"{TMP}/run"])
rc, t_eval = sh(["eval", "--model", f"{TMP}/smol", "--guard", f"{TMP}/run", "--device", DEV, "--cache_dir", f"{TMP}/c_bf16"])
if os.path.exists(f"{TMP}/run/eval_results.json"):
    shutil.copy(f"{TMP}/run/eval_results.json", f"{OUT}/eval_results.json")
sys.path.insert(0, os.getcwd())
from siren.runtime.guard import SirenGuard
texts = [row(i, "x", "z")["text"] for i in range(256)]
g = SirenGuard.from_pretrained(f"{TMP}/run", device=DEV)
print("guard dtype on cuda:", g.backbone.model.dtype if hasattr(g.backbone, "model") else "?")
s_gpu = np.array([r.score for r in g.score_batch(texts)])
t = time.time(); g.score_batch(texts * 4)
print(f"score_batch on cuda: {1024 / (time.time() - t):.0f} texts/s")
t = time.time()
for x in texts[:64]: g.score(x)
print(f"score (one at a time) on cuda: {(time.time() - t) / 64 * 1000:.1f} ms/text")
gc = SirenGuard.from_pretrained(f"{TMP}/run", device="cpu")
s_cpu = np.array([r.score for r in gc.score_batch(texts[:64])])
print(f"guard cpu vs cuda (same dtype) on 64 texts: max |score diff| {np.abs(s_cpu - s_gpu[:64]).max():.2e}, "
      f"decision agreement {np.mean((s_cpu >= 0.5) == (s_gpu[:64] >= 0.5)):.3f}")
print(f"TIMES extract bf16 {t_bf16:.1f}s  extract fp32 {t_fp32:.1f}s  train {t_train:.1f}s  eval {t_eval:.1f}s")
