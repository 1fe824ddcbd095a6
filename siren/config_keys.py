"""Every config key siren knows: its type, its allowed values, its help text and the commands
that read it. Its default is in `configs/defaults.yaml` and only there (see `siren.config`).

A key is one line here; its flag (`--name`), its shell variable (`NAME`), its dataclass field
and its check all follow from that line. `null` gives the meaning of a null value (one text,
or one per command); `shell` names a driver variable that differs from NAME (none today).
"""

from __future__ import annotations

from dataclasses import dataclass

# The commands whose settings are typed configs, and their section of configs/defaults.yaml:
# a command reads a key from its own section when the section sets it, else from the top level.
COMMANDS = ("extract", "train", "eval", "score", "serve", "eval-stream", "eval-think", "report")
SECTION = {c: c.replace("-", "_") for c in COMMANDS}
SECTION.update(extract=None, train=None)   # extract and train read the top level only


@dataclass(frozen=True)
class Key:
    name: str
    type: type                       # int, float, str or bool (of each item, for a list)
    commands: tuple[str, ...]
    help: str
    list: bool = False               # a list of `type` (a flag with several values)
    nullable: bool = False           # null is allowed (its meaning: `null`)
    null: str | dict = ""            # what null means, or {command: what null means}
    choices: tuple = ()
    min: float | None = None         # inclusive bounds of a number, or of each item of a list
    max: float | None = None
    shell: str | None = None         # the drivers' variable, when it is not NAME.upper()
    empty_ok: bool = True            # for a list: [] is allowed

    def null_text(self, command: str) -> str:
        return self.null.get(command, "") if isinstance(self.null, dict) else self.null

    @property
    def variable(self) -> str:
        return self.shell or self.name.upper()


DATA = ("extract", "train")
FEAT = ("extract", "train", "eval")                      # feature extraction settings
RUNTIME = ("score", "serve", "eval-stream", "eval-think")  # commands that load a guard
GUARD_NULL = {c: "the guard's" for c in RUNTIME}
DEVICE_NULL = "cuda if available, else cpu"
BT_NULL = "2048 on CPU, 16384 on GPU"

KEYS: tuple[Key, ...] = (
    # --- what to train on
    Key("model", str, DATA + ("eval",) + RUNTIME,
        "backbone: registry name (configs/backbones.yaml), local folder or Hub id; for a command that "
        "reads a guard, also a guard folder or a Hub repo holding one"),
    Key("datasets", str, DATA + ("eval",), "datasets (siren data list)", list=True, nullable=True, empty_ok=False,
        null={"train": "the paper's that are available", "extract": "the paper's that are available",
              "eval": "the training datasets"}),
    Key("data_dir", str, DATA + ("eval",), "SIREN-ready JSONL folder", nullable=True,
        null="$SIREN_DATA_DIR, else the Hugging Face Hub"),
    Key("max_per_split", int, DATA + ("eval",), "rows per split and dataset (seeded, stratified): one number, "
        "or three (train validation test)", list=True, nullable=True, null="all", min=1, empty_ok=False),
    Key("seed", int, DATA + ("eval-stream", "eval-think"), "random seed (splits, search, sampling)", min=0),
    Key("val_ratio", float, DATA, "validation share carved from train when the source has none", min=0.0, max=1.0),
    # --- features
    Key("pooling_types", str, DATA, "residual_mean and/or mlp_mean; with both, CV picks", list=True,
        choices=("residual_mean", "mlp_mean"), empty_ok=False),
    Key("max_length", int, DATA, "tokens per text (right truncation)", min=1),
    Key("batch_size", int, FEAT + ("score", "eval-stream", "eval-think"), "texts per backbone forward at most",
        nullable=True, null="no cap", min=1),
    Key("batch_tokens", int, FEAT + RUNTIME + ("report",), "padded tokens per length-bucketed forward",
        nullable=True, null=BT_NULL, min=1),
    Key("dtype", str, FEAT + RUNTIME, "backbone dtype", nullable=True, choices=("float32", "bfloat16", "float16", "auto"),
        null=dict({c: "bfloat16 where the device runs it natively, else float32" for c in DATA},
                  eval="the training run's", **{c: "the one the guard was trained with, else auto" for c in RUNTIME})),
    Key("trust_remote_code", bool, FEAT + ("score", "serve"),
        "run a backbone's own Python model code (only for backbones whose authors you trust)"),
    Key("device", str, FEAT + RUNTIME + ("report",), "cpu | cuda | cuda:1 | auto", nullable=True,
        null=dict({c: DEVICE_NULL for c in DATA + RUNTIME}, eval="the training run's", report="the run's")),
    Key("cache_dtype", str, DATA, "dtype of the on-disk feature cache", choices=("float16", "float32")),
    Key("cache_dir", str, FEAT + ("report",), "feature cache folder", nullable=True,
        null={"extract": "$SIREN_CACHE/features", "train": "$SIREN_CACHE/features", "eval": "the training run's",
              "report": "the run's"}),
    # --- probes, selection, head
    Key("c_values", float, ("train",), "probe penalty grid: mean BCE + ||w||_1 / C", list=True, min=0.0,
        empty_ok=False),
    Key("probe_tol", float, ("train",), "probe stopping tolerance (step size next to the weights)", min=0.0),
    Key("probe_c_rule", str, ("train",), "each layer's C: one_se (sparsest within one standard error) | best",
        choices=("one_se", "best")),
    Key("probe_refit", bool, ("train",), "refit each layer's chosen probe on train+validation before selecting"),
    Key("selection_thresholds", float, ("train",), "keep a layer's top |w| neurons until they reach this share "
        "of its total", list=True, min=0.0, max=1.0, empty_ok=False),
    Key("layer_weight_floor", float, ("train",), "layer weight: min-max normalised validation F1, floored",
        min=0.0, max=1.0),
    Key("n_trials", int, ("train", "report"), "Optuna trials of the head search", min=1, nullable=True,
        null={"report": "the run's"}),
    Key("n_folds", int, ("train", "report"), "k-fold CV on train+validation", min=2, nullable=True,
        null={"report": "the run's"}),
    Key("n_jobs", int, ("train",), "parallel Optuna trials in one process", min=1),
    Key("storage", str, ("train",), "Optuna storage shared by workers (sqlite:///x.db, x.journal, RDB URL)",
        nullable=True, null="in memory"),
    Key("study_name", str, ("train",), "Optuna study name", nullable=True, null="none"),
    Key("max_epochs", int, ("train",), "head training epochs at most", min=1),
    Key("patience", int, ("train",), "epochs without CV improvement before a fold stops", min=1),
    Key("head_batch_size", int, ("train",), "the MLP head's mini-batch", min=1),
    Key("pruner", str, ("train",), "Optuna pruner of the head search", choices=("median", "halving", "none")),
    Key("head_width_cap", int, ("train",), "largest first hidden width the head search tries", min=1),
    Key("head_dtype", str, ("train",), "head training dtype", nullable=True, choices=("float32", "bfloat16", "auto"),
        null="bfloat16 where the CPU runs it natively"),
    Key("final_head", str, ("train",), "refit: the best configuration retrained on train+validation; "
        "ensemble: the mean of its CV fold heads", choices=("refit", "ensemble")),
    Key("scale_by_layer_weight", bool, ("train",), "multiply each standardised head input by its layer's weight"),
    Key("decision_threshold", float, ("train",) + RUNTIME, "score >= this is harmful", min=0.0, max=1.0,
        nullable=True, null=GUARD_NULL),
    Key("threshold_from_cv", bool, ("train",), "choose the decision threshold on the head search's "
        "out-of-fold scores instead"),
    Key("answer_head", str, ("train",), "the answer verdict's head: logistic (on response rows' answer pools), "
        "shared (the main head), none", choices=("logistic", "shared", "none")),
    Key("answer_cuts", int, ("train",), "answer prefixes (answer tokens) the answer head also trains on", list=True,
        min=1),
    Key("answer_ramp_tokens", float, ("train",), "a harmful answer's prefix of t tokens weighs min(1, t / this)",
        nullable=True, null="1 (every prefix weighs 1)", min=0.0),
    Key("answer_harmful_min_tokens", int, ("train",), "a harmful answer's prefixes shorter than this are left out",
        min=0),
    Key("answer_c", float, ("train",), "inverse L2 strength of the logistic answer head", min=0.0),
    Key("answer_prompt_rows", bool, ("train",), "the prompt-level rows' text pools train the answer head too"),
    Key("answer_main_weight", float, ("train",), "answer verdict = (1 - w) * answer head + w * main head on the "
        "answer pool (needs final_head ensemble)", min=0.0, max=1.0),
    Key("target_false_alarm", float, ("train", "eval-stream"), "pick the lowest threshold flagging at most this share "
        "of the safe validation streams", min=0.0, max=1.0, nullable=True,
        null={"eval-stream": "no target: decision_threshold", "train": "0.5"}),
    Key("category_head", str, ("train",), "harm-category head (configs/categories.yaml): auto = trained whenever "
        "the training rows carry categories; off = never", choices=("auto", "off")),
    Key("out_dir", str, ("train", "eval-stream"), "output folder", nullable=True,
        null={"train": "train/probes/optuna/{MODEL}_general",
              "eval-stream": "<guard folder>/streaming_<split or data file name>"}),
    # --- siren eval
    Key("guard", str, ("eval",), "guard folder", nullable=True, null="the run folder of MODEL"),
    Key("extra_datasets", str, ("eval", "report"), "more test sets, e.g. xstest advbench harmbench", list=True),
    Key("calibrate", bool, ("eval",), "store the threshold that maximises validation F1 as the guard's"),
    Key("answers", bool, ("eval",), "with an answer head: also score the test rows that carry a response "
        "(a backbone forward) and report the answer verdict beside the whole text's"),
    # --- siren serve
    Key("host", str, ("serve",), "address to bind (127.0.0.1: this machine only)"),
    Key("port", int, ("serve",), "port to bind", min=1, max=65535),
    Key("model_name", str, ("serve",), "the model id clients see", nullable=True, null="the guard folder's name"),
    Key("compile", bool, ("serve",), "score lone requests through a torch.compile'd forward (compiles at start-up)"),
    Key("threads", int, ("serve",), "torch threads for scoring", nullable=True, null="torch's, one per core", min=1),
    Key("log_level", str, ("serve",), "uvicorn log level", choices=("critical", "error", "warning", "info", "debug",
                                                                    "trace")),
    Key("max_batch_size", int, ("serve",), "texts per dynamic batch at most (1: no dynamic batching)", min=1),
    Key("max_wait_ms", float, ("serve",), "how long the worker keeps collecting requests after the first", min=0.0),
    Key("max_items", int, ("serve",), "texts per request", min=1),
    Key("max_chars", int, ("serve",), "characters per text", min=1),
    Key("max_body_bytes", int, ("serve",), "request body bytes", min=1),
    Key("max_queue", int, ("serve",), "requests waiting for the worker (503 beyond)", min=1),
    Key("max_stream_chunks", int, ("serve",), "chunks per streaming session", min=1),
    # what a hostile client can hold (siren/runtime/serve_net.py)
    Key("header_timeout_s", float, ("serve",), "a request's headers must arrive within this many seconds", min=0.1),
    Key("body_timeout_s", float, ("serve",), "... and its body within this many seconds after the headers", min=0.1),
    Key("idle_timeout_s", float, ("serve",), "a kept-alive connection with no new request is closed after this",
        min=0.1),
    Key("max_connections", int, ("serve",), "open connections; beyond, the oldest one still waiting for a request "
        "is closed (else 503)", min=1),
    Key("max_header_bytes", int, ("serve",), "request line + headers, bytes", min=256),
    Key("ws_handshake_timeout_s", float, ("serve",), "/v1/stream: the start message (with the API key) must come "
        "within this many seconds", min=0.1),
    Key("refusal_log_interval_s", float, ("serve",), "refusals and time-outs are logged once per interval",
        min=0.0),
    # --- streams (siren serve's /v1/stream, siren eval-stream) and siren eval-think
    Key("debounce", int, ("train", "serve", "eval-stream"), "flag a stream after this many consecutive scores >= the "
        "threshold", min=1, nullable=True,
        null={"train": "chosen on validation streams",
              "eval-stream": "the guard's stream rule (answer verdict), else the top level's",
              "serve": "the guard's stream rule (answer verdict), else the top level's"}),
    Key("min_answer_tokens", int, ("train", "eval-stream"), "never flag a stream before this many answer tokens",
        min=0, nullable=True, null={"train": "chosen on validation streams",
                                    "eval-stream": "the guard's stream rule (answer verdict), else the top level's"}),
    Key("ema", float, ("train", "eval-stream"), "smooth a stream's scores with this EMA alpha in (0, 1] (1: the raw scores)",
        min=0.0, max=1.0, nullable=True,
        null={"eval-stream": "the guard's stream rule (answer verdict), else the top level's (null: the raw scores)"}),
    Key("verdict", str, ("eval-stream",), "response: the answer's verdict (answer head, prompt in context); text: the "
        "whole text's score; auto: response when the guard has an answer head", choices=("auto", "response", "text")),
    Key("val_data_file", str, ("eval-stream",), "SIREN-ready JSONL of validation streams", nullable=True,
        null="data_file (with val_ids_split)"),
    Key("val_ids_split", str, ("eval-stream",), "split inside ids_from whose streams are the validation streams",
        nullable=True, null="none", choices=("train", "validation", "test")),
    Key("val_limit", int, ("eval-stream",), "a seeded sample of this many safe validation streams", nullable=True,
        null="all", min=1),
    Key("source", str, ("eval-stream",), "qwen3guardtest: the Hub benchmark (or DATA_FILE, a local copy); "
        "jsonl: SIREN-ready rows with prompt/response/label in DATA_FILE", choices=("qwen3guardtest", "jsonl")),
    Key("split", str, ("eval-stream", "eval-think"), "Qwen3GuardTest split"),
    Key("data_file", str, ("eval-stream", "eval-think"), "local JSONL", nullable=True, null="the Hub"),
    Key("reference_tokenizer", str, ("eval-stream",), "tokenizer of Qwen3GuardTest's input_ids", nullable=True,
        null="Qwen/Qwen3-0.6B"),
    Key("ids_from", str, ("eval-stream",), "splits.json: keep only the ids it lists for ids_dataset / ids_split",
        nullable=True, null="every row"),
    Key("ids_dataset", str, ("eval-stream",), "dataset name inside ids_from", nullable=True, null="none"),
    Key("ids_split", str, ("eval-stream",), "split inside ids_from", choices=("train", "validation", "test")),
    Key("limit", int, ("eval-stream", "eval-think"), "a seeded sample of this many rows", nullable=True,
        null="all", min=1),
    Key("every", int, ("eval-stream",), "score after every k response tokens (0: only the authors' checkpoints)",
        min=0),
    Key("max_tokens", int, ("eval-stream",), "response tokens read per stream at most", nullable=True, null="all",
        min=1),
    Key("graces", int, ("eval-stream",), "tokens after the unsafe sentence at which recall is counted", list=True,
        min=1, empty_ok=False),
    Key("with_prompt", bool, ("eval-stream", "eval-think"), "score prompt + newline + response (false: the "
        "response alone, as the authors)"),
    Key("stateless", bool, ("eval-stream",), "never use the runtime's streaming session"),
    Key("save_traces", bool, ("eval-stream",), "also write every score to traces.jsonl"),
    Key("out", str, ("eval-think", "report"), "output path", nullable=True,
        null={"eval-think": "<guard folder>/think_eval_results.json", "report": "reports/<run folder name>"}),
    # --- siren report
    Key("run", str, ("report",), "trained run folder (results.json + splits.json + guard)", nullable=True,
        null="required"),
    Key("systems", str, ("report",), "systems to compare: tfidf_lr profanity_check last_layer best_layer "
        "all_neurons_mlp uniform_weights siren", list=True, nullable=True, null="all", empty_ok=False),
    Key("guards", str, ("report",), "guard models: registry names or NAME=FOLDER", list=True),
    Key("all_neurons_limit", int, ("report",), "all_neurons_mlp uses all L*d features up to this many, else a "
        "random subset of SIREN's size", min=1),
    Key("latency_texts", int, ("report",), "test texts timed (in batches of 32; the first 8 at batch 1)", min=2),
    Key("guard_batch_size", int, ("report",), "texts per guard-model generate call", min=1),
    Key("guard_device", str, ("report",), "device of the guard models", nullable=True, null=DEVICE_NULL),
)
BY_NAME = {k.name: k for k in KEYS}
assert len(BY_NAME) == len(KEYS), "a key is listed twice"
