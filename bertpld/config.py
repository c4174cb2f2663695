"""Every setting bertpld has, with its default, in one place.

Each command takes one top-level config (`PrepareConfig`, `PretrainConfig`, `FinetuneConfig`) made of
sections. Values are resolved in this order, later winning:

1. the defaults below;
2. a TOML config file (a path, or NAME for the shipped `configs/NAME.toml`), which holds only what differs;
3. generic overrides, ``--set section.field=value`` (repeatable);
4. the dedicated command-line options (``--max-steps``, ``--pld`` ...).

`model.preset` is special: when given, the preset's sizes are applied first and any model field
set explicitly in the same or a later layer wins over it.

The `impl` section holds settings that change only speed and memory, never what is computed
(up to floating-point rounding); everything else may change results.
The resolved config is written as JSON into every output directory.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertpld.errors import BertpldError


def _config_dir() -> Path:
    """The shipped configs: the top-level configs/, installed as the package `bertpld.configs`
    (pyproject.toml maps it, so it travels in wheels and sdists and an editable install points back to
    it); a checkout used without installing (only on PYTHONPATH) reads configs/ next to the package."""
    try:
        configs = importlib.resources.files("bertpld.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"
    return Path(str(configs))  # a pathlib.Path already, for any install on the file system


CONFIG_DIR = _config_dir()


class ConfigError(BertpldError):
    """An invalid config value; the message names the field."""


# ----------------------------------------------------------------------------------------------
# Sections


MODEL_PRESETS: dict[str, dict[str, int]] = {
    # name: layers x hidden, heads, FFN (BERT miniatures of Turc et al. 2019, plus base/large)
    "tiny": dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=256),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": dict(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


@dataclass
class ModelConfig:
    preset: str = ""
    """Size preset applied before the fields below: one of MODEL_PRESETS, or empty."""
    vocab_size: int = 0
    """Tokenizer vocabulary size (0: taken from the prepared data); embedding rows are padded."""
    pad_vocab_multiple: int = 8
    """Pad the embedding rows to a multiple of this (padded rows are never predicted)."""
    hidden_size: int = 768
    """Width of the encoder."""
    num_layers: int = 12
    """Number of encoder blocks (L)."""
    num_heads: int = 12
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward sublayer."""
    max_position_embeddings: int = 512
    """Longest sequence the position embedding covers."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings and on each sublayer's output."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    position_init: str = "normal"
    """Initial position embeddings: 'normal' (BERT) or 'sinusoidal' (the Transformer's sines and
    cosines, root-mean-square initializer_range; still learned, the architecture is unchanged)."""
    norm: str = "post"
    """Block arrangement: 'post' (original BERT) or 'pre' (Pre-LN, required by PLD)."""

    def validate(self) -> None:
        if self.preset and self.preset not in MODEL_PRESETS:
            _fail("model.preset", self.preset, f"one of {', '.join(MODEL_PRESETS)}")
        if self.vocab_size < 0:
            _fail("model.vocab_size", self.vocab_size, "an integer >= 0 (0: from the data)")
        for name in (
            "pad_vocab_multiple",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _positive(f"model.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads:
            _fail("model.num_heads", self.num_heads, f"a divisor of model.hidden_size ({self.hidden_size})")
        _unit("model.hidden_dropout", self.hidden_dropout, closed_right=False)
        _unit("model.attention_dropout", self.attention_dropout, closed_right=False)
        _positive("model.layer_norm_eps", self.layer_norm_eps)
        _positive("model.initializer_range", self.initializer_range)
        _choice("model.norm", self.norm, ("post", "pre"))
        _choice("model.position_init", self.position_init, ("normal", "sinusoidal"))

    @property
    def padded_vocab_size(self) -> int:
        assert self.vocab_size > 0, "model.vocab_size must be resolved from the data first"
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m


@dataclass
class PLDConfig:
    enabled: bool = False
    """Switch Progressive Layer Dropping on (requires model.norm = 'pre')."""
    theta_bar: float = 0.5
    """Limit of the keep probability of the top block, theta(t) -> theta_bar (paper: 0.5)."""
    gamma: float | None = None
    """Decay rate of theta(t) per optimizer step; empty/none means 100 / total steps (paper's rule)."""
    variant: str = "paper"
    """Keep probabilities along depth: 'paper' (p_l = 1 - l/L (1-theta)) or 'deepspeed'."""

    def validate(self) -> None:
        _unit("pld.theta_bar", self.theta_bar, closed_left=False)
        if self.gamma is not None and not (self.gamma > 0 and math.isfinite(self.gamma)):
            _fail("pld.gamma", self.gamma, "a positive number, or none for 100 / total steps")
        _choice("pld.variant", self.variant, ("paper", "deepspeed"))


@dataclass
class DataConfig:
    path: str = ""
    """Directory written by `bertpld prepare` (holds manifest.json, tokenizer.json, shards)."""
    objective: str = "mlm+nsp"
    """Pre-training objective: 'mlm+nsp' (BERT sentence pairs) or 'mlm' (packed sentences)."""
    max_seq_len: int = 128
    """Tokens per training sequence, [CLS] and [SEP] included."""
    mask_prob: float = 0.15
    """Fraction of non-special tokens chosen for masked-LM prediction in training."""
    max_predictions: int = 0
    """Masked positions per training sequence (0: ceil(max_seq_len * mask_prob))."""
    val_mask_prob: float = 0.15
    """Fraction masked in the validation split (BERT's 15% whatever mask_prob is, so that the
    validation MLM loss of runs trained with different masking rates compares)."""
    short_seq_prob: float = 0.1
    """Probability of a shorter target length for a sentence pair (as in original BERT)."""
    shuffle_window_tokens: int = 1 << 26
    """Training order: each epoch takes the shards in a random order, in windows of about this
    many tokens, and shuffles the instances within a window (memory and start-up do not grow
    with the corpus; a window is the unit of shuffling)."""

    def validate(self) -> None:
        _choice("data.objective", self.objective, ("mlm+nsp", "mlm"))
        if self.max_seq_len < 8:
            _fail("data.max_seq_len", self.max_seq_len, "an integer >= 8")
        _unit("data.mask_prob", self.mask_prob, closed_left=False, closed_right=False)
        _unit("data.val_mask_prob", self.val_mask_prob, closed_left=False, closed_right=False)
        if self.max_predictions < 0:
            _fail("data.max_predictions", self.max_predictions, "an integer >= 0")
        _unit("data.short_seq_prob", self.short_seq_prob)
        _positive("data.shuffle_window_tokens", self.shuffle_window_tokens)

    @property
    def predictions_per_seq(self) -> int:
        """MLM slots per training sequence."""
        return self.max_predictions or math.ceil(self.max_seq_len * self.mask_prob)

    @property
    def val_predictions_per_seq(self) -> int:
        """MLM slots per validation sequence."""
        return math.ceil(self.max_seq_len * self.val_mask_prob)


@dataclass
class TrainConfig:
    seed: int = 1234
    """Seed for initialisation, data order, masking, dropout and PLD gates."""
    global_batch_size: int = 256
    """Sequences per optimizer step, summed over all ranks and accumulation micro-steps."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: no limit from steps)."""
    max_samples: int = 0
    """Stop after this many training sequences (0: no limit from samples)."""
    time_budget: float = 0.0
    """Stop after this many seconds of training wall-clock (0: no budget)."""
    max_flops: float = 0.0
    """Stop when the executed FLOPs (all ranks) reach this (0: no limit); the lr schedule and PLD's
    gamma rule then span the steps the budget is expected to take (PLD's expected blocks per step)."""
    target_val_loss: float = 0.0
    """Stop when the validation MLM loss falls to this value (0: no target)."""
    optimizer: str = "adamw"
    """'adamw' or 'lamb'."""
    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay (never applied to biases and LayerNorm weights)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    schedule: str = "linear"
    """After warmup: 'linear' (to 0), 'cosine' (to 0), 'exp' (paper: lr * 0.99^((t-w)/1000)), 'constant'."""
    warmup: float = 0.02
    """Warmup length: a fraction of total steps if < 1, else a number of steps."""
    total_steps: int = 0
    """Steps the lr schedule and the PLD gamma rule span (0: derived from max_steps/max_samples/max_flops)."""
    eval_every: int = 100
    """Compute validation loss every this many steps (and at the end; 0: only at the end)."""
    eval_sequences: int = 640
    """Validation sequences per evaluation: the first this many of the split (0: all of it), with
    fixed masks, at full depth; the same whatever the micro-batch and the number of ranks."""
    save_every: int = 500
    """Write a checkpoint every this many steps (and at the end; 0: only at the end)."""
    keep_checkpoints: int = 2
    """Keep only the newest this many checkpoints."""
    log_every: int = 10
    """Write a metrics.jsonl row every this many steps."""

    def validate(self) -> None:
        if self.global_batch_size < 1:
            _fail("train.global_batch_size", self.global_batch_size, "a positive integer")
        for name in ("max_steps", "max_samples", "total_steps", "eval_every", "save_every", "eval_sequences"):
            if getattr(self, name) < 0:
                _fail(f"train.{name}", getattr(self, name), "an integer >= 0")
        for name in ("max_flops", "time_budget", "target_val_loss", "weight_decay", "grad_clip", "warmup"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                _fail(f"train.{name}", v, "a finite number >= 0")
        _choice("train.optimizer", self.optimizer, ("adamw", "lamb"))
        _positive("train.lr", self.lr)
        for b in self.betas:
            _unit("train.betas", b, closed_right=False)
        _positive("train.eps", self.eps)
        _choice("train.schedule", self.schedule, ("linear", "cosine", "exp", "constant"))
        for name in ("keep_checkpoints", "log_every"):
            _positive(f"train.{name}", getattr(self, name))


@dataclass
class ImplConfig:
    """How a run computes. device, compile, fused_optimizer, threads, keep_host_memory and
    micro_batch_size change speed and float rounding (micro_batch_size also dropout masks), and may
    change on resume; precision and unpad change the numbers (train.RESUMABLE_CHANGES,
    SPEED_ONLY_ON_RESUME)."""

    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "auto"
    """'auto' (bf16 on GPU and on CPUs with native bf16 matmuls, AMX or AVX512-BF16; else fp32),
    'fp32', 'bf16' (autocast) or 'fp16' (autocast + grad scaler, GPU only)."""
    micro_batch_size: int = 32
    """Sequences per forward/backward on one rank; accumulation makes up the global batch."""
    unpad: bool = True
    """Pre-training: run the encoder on the real tokens only, re-padding just for attention (the
    same maths; padding costs nothing; dropout masks are drawn differently, so not on resume)."""
    unpad_multiple: int = 0
    """With unpad: the encoder's row count is rounded up to a multiple of this with padding
    positions (1: real tokens only; 0: a power of two near 1/64 of a micro-batch's positions,
    8 to 64: 64 for the demo's 64 x 64, 16 for BERT-base's 8 x 128 on a CPU; model.row_multiple).
    Each new row count costs a CPU's oneDNN a new JIT-compiled matmul kernel per layer shape and
    direction; rounded, a run meets a few counts instead of one per batch, for about 1% more rows.
    The extra rows are not counted as FLOPs (the count stays independent of how a step is cut
    into micro-batches; they show as time). Dropout draws differ, so not on resume."""
    compile: bool = False
    """torch.compile the model's blocks (falls back to eager if compilation fails)."""
    fused_optimizer: bool = True
    """Use torch's fused AdamW kernel (CUDA, and CPU since torch 2.4) instead of the foreach one."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    keep_host_memory: bool = True
    """Linux/glibc: malloc keeps freed memory for reuse instead of handing it back to the OS, so
    a step does not page-fault its activations in again (bertpld.device.keep_host_memory)."""

    def validate(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail("impl.device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        _choice("impl.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _positive("impl.micro_batch_size", self.micro_batch_size)
        if self.unpad_multiple < 0:
            _fail("impl.unpad_multiple", self.unpad_multiple, "an integer >= 0 (0: automatic)")
        if self.threads < 0:
            _fail("impl.threads", self.threads, "an integer >= 0")


@dataclass
class PrepareSection:
    sources: list[str] = field(default_factory=lambda: ["demo"])
    """Corpora to combine: 'demo', 'wikipedia', 'bookcorpus', or 'text' (local files in text_files)."""
    wikipedia: str = "wikimedia/wikipedia:20231101.en"
    """Wikipedia: a hub 'name:config', local .parquet/.jsonl files or globs, or *.xml.bz2 dumps."""
    bookcorpus: str = "bookcorpus/bookcorpus:plain_text"
    """BookCorpus: a hub 'name:config', or local .txt/.parquet/.jsonl files or globs."""
    text_files: list[str] = field(default_factory=list)
    """Local files or globs for the 'text' source: .txt (blank-line documents), .jsonl, .parquet."""
    max_documents: int = 0
    """Stop reading each source after this many documents (0: all)."""
    min_doc_chars: int = 200
    """Drop cleaned documents shorter than this many characters."""
    vocab_size: int = 30522
    """WordPiece vocabulary size, special tokens included."""
    tokenizer: str = ""
    """Reuse this tokenizer.json instead of training one."""
    val_fraction: float = 0.01
    """Fraction of documents held out for validation (chosen by a hash of the document)."""
    shard_tokens: int = 4_000_000
    """Target tokens per shard file."""
    tokenizer_sample_chars: int = 200_000_000
    """Train the tokenizer on at most this many characters of the corpus."""
    seed: int = 0
    """Seed for anything random in preparation."""
    workers: int = 0
    """Processes that clean and encode documents (0: the machine's cores); the output is the same."""

    def validate(self) -> None:
        if not self.sources:
            _fail("prepare.sources", self.sources, "at least one of demo, wikipedia, bookcorpus, text")
        for s in self.sources:
            _choice("prepare.sources", s, ("demo", "wikipedia", "bookcorpus", "text"))
        if "text" in self.sources and not self.text_files:
            _fail("prepare.text_files", self.text_files, "at least one file or glob when sources has 'text'")
        if self.max_documents < 0:
            _fail("prepare.max_documents", self.max_documents, "an integer >= 0")
        if self.min_doc_chars < 0:
            _fail("prepare.min_doc_chars", self.min_doc_chars, "an integer >= 0")
        if self.vocab_size < 64:
            _fail("prepare.vocab_size", self.vocab_size, "an integer >= 64")
        _unit("prepare.val_fraction", self.val_fraction, closed_right=False)
        _positive("prepare.shard_tokens", self.shard_tokens)
        _positive("prepare.tokenizer_sample_chars", self.tokenizer_sample_chars)
        if self.workers < 0:
            _fail("prepare.workers", self.workers, "an integer >= 0 (0: the machine's cores)")


# PrepareSection fields that change only speed, never the bytes written: left out of the config
# a prepared directory records (so of its fingerprint), so a rerun with other values is a no-op.
PREPARE_SPEED_ONLY = ("workers",)


@dataclass
class FinetuneSection:
    task: str = "rt-polarity"
    """Task name (see `bertpld finetune --help`), or 'all' for every GLUE task."""
    data_dir: str = ""
    """Local GLUE data: the original TSV layout (glue_data/) or hub-layout parquet/jsonl."""
    lr: float | None = None
    """Peak learning rate (none: the task's default from the paper)."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    epochs: float = 5.0
    """Passes over the training split."""
    max_steps: int = 0
    """Stop after this many steps (0: epochs decide)."""
    max_seq_len: int = 0
    """Longest input (0: 128, or the model's position limit if lower); batches pad to their longest."""
    warmup: float = 0.1
    """Warmup fraction of total steps, then linear decay to 0."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not on biases and LayerNorm)."""
    classifier_dropout: float = 0.1
    """Dropout before the classification head."""
    seeds: int = 1
    """Fine-tune this many times (seeds seed, seed+1, ...) and report each and the median."""
    seed: int = 42
    """First fine-tuning seed."""
    max_train_examples: int = 0
    """Use at most this many training examples (0: all)."""
    eval_batch_size: int = 128
    """Sequences per evaluation batch."""

    def validate(self) -> None:
        if self.lr is not None:
            _positive("finetune.lr", self.lr)
        for name in ("batch_size", "seeds", "eval_batch_size"):
            _positive(f"finetune.{name}", getattr(self, name))
        if self.max_seq_len < 0 or 0 < self.max_seq_len < 8:
            _fail("finetune.max_seq_len", self.max_seq_len, "0 (automatic) or an integer >= 8")
        _positive("finetune.epochs", self.epochs)
        for name in ("max_steps", "max_train_examples"):
            if getattr(self, name) < 0:
                _fail(f"finetune.{name}", getattr(self, name), "an integer >= 0")
        _unit("finetune.warmup", self.warmup, closed_right=False)
        _unit("finetune.classifier_dropout", self.classifier_dropout, closed_right=False)
        if self.weight_decay < 0:
            _fail("finetune.weight_decay", self.weight_decay, "a number >= 0")


# ----------------------------------------------------------------------------------------------
# Top-level configs, one per command


@dataclass
class PrepareConfig:
    prepare: PrepareSection = field(default_factory=PrepareSection)

    def validate(self) -> None:
        self.prepare.validate()


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    pld: PLDConfig = field(default_factory=PLDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)

    def validate(self) -> None:
        self.model.validate()
        self.pld.validate()
        self.data.validate()
        self.train.validate()
        self.impl.validate()
        if self.pld.enabled and self.model.norm != "pre":
            raise ConfigError(
                "pld.enabled: Progressive Layer Dropping needs the Pre-LN arrangement "
                "(model.norm = 'pre'); the Post-LN baseline is trained without PLD"
            )
        if self.data.max_seq_len > self.model.max_position_embeddings:
            _fail(
                "data.max_seq_len",
                self.data.max_seq_len,
                f"at most model.max_position_embeddings ({self.model.max_position_embeddings})",
            )


@dataclass
class FinetuneConfig:
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    impl: ImplConfig = field(default_factory=ImplConfig)

    def validate(self) -> None:
        self.finetune.validate()
        self.impl.validate()


# ----------------------------------------------------------------------------------------------
# Loading, overriding, saving


def resolve_config_path(name_or_path: str) -> Path:
    """A path, or the bare name of a file in configs/ ('demo' -> configs/demo.toml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.toml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.toml"))) or "none"
    raise ConfigError(f"--config {name_or_path}: no such file, and not a name in configs/ ({known})")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """['train.lr=1e-3', 'model.norm=pre'] -> {'train': {'lr': '1e-3'}, 'model': {'norm': 'pre'}}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item}: expected section.field=value, e.g. train.lr=1e-3")
        out.setdefault(parts[0], {})[parts[1]] = value.strip()
    return out


def load_config(cls: type, file: str | Path | None = None, *layers: dict[str, Any] | None, where: str = ""):
    """Build `cls` from defaults, an optional TOML file, then override layers (later wins).

    Layer values may be typed or strings (from --set); strings are parsed by the field's type.
    Unknown sections or fields, badly typed values and invalid values raise ConfigError.
    """
    raw: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        raw.append((str(file), read_config_file(file)))
    raw.extend(("--set/options", layer) for layer in layers if layer)
    merged: dict[str, dict[str, Any]] = {}
    for origin, layer in raw:
        for section, values in layer.items():
            _field(cls, section, origin)
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: [{section}] must be a table of fields")
            sec_cls = _hint(cls, section)
            for key, value in values.items():
                f = _field(sec_cls, key, origin, prefix=f"{section}.")
                merged.setdefault(section, {})[key] = _coerce(
                    f"{section}.{key}", value, _hint(sec_cls, f.name)
                )
    kwargs = {}
    for f in dataclasses.fields(cls):
        sec_cls = _hint(cls, f.name)
        values = merged.get(f.name, {})
        if sec_cls is ModelConfig and values.get("preset"):
            preset = values["preset"]
            if preset not in MODEL_PRESETS:
                _fail("model.preset", preset, f"one of {', '.join(MODEL_PRESETS)}")
            values = {**MODEL_PRESETS[preset], **values}
        kwargs[f.name] = sec_cls(**values)
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A resolved config saved as JSON (a run's config.json), as a dict; one-line error if unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the saved config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config sections")
    return data


# Pre-training fields newer than some saved runs, with the value those runs effectively had
# (a function of the saved config).
RUN_FIELDS_ADDED: dict[str, Any] = {
    "impl.unpad": lambda saved: False,
    "impl.unpad_multiple": lambda saved: 1,
    "impl.keep_host_memory": lambda saved: False,
    "model.position_init": lambda saved: "normal",
    "train.max_flops": lambda saved: 0.0,
    "data.val_mask_prob": lambda saved: saved.get("data", {}).get("mask_prob", 0.15),
    "data.shuffle_window_tokens": lambda saved: 1 << 26,
    # validation was counted in micro-batches (train.eval_batches, default 20)
    "train.eval_sequences": lambda saved: (
        saved["train"].pop("eval_batches", 20) * saved.get("impl", {}).get("micro_batch_size", 32)
    ),
}


def read_run_config_json(path: str | Path) -> dict[str, Any]:
    """A pre-training run's config.json; fields the run predates get the value it ran with."""
    saved = read_config_json(path)
    for key, value in RUN_FIELDS_ADDED.items():
        section, name = key.split(".")
        if name not in saved.get(section, {}):
            saved.setdefault(section, {})[name] = value(saved)
    return saved


def config_from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a config saved with `config_to_dict` (e.g. a run's config.json)."""
    return load_config(cls, None, data)


def save_config(cfg, path: str | Path) -> None:
    from bertpld.atomic import atomic_write_json

    atomic_write_json(path, config_to_dict(cfg))


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flattened 'section.field' -> (a value, b value) for every field that differs."""
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it (for help texts)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = str(nxt.value.value).strip()  # type: ignore[union-attr]
    return docs


# ----------------------------------------------------------------------------------------------
# Helpers


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _field(cls: type, name: str, origin: str, prefix: str = "") -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    what = "field" if prefix else "section"
    raise ConfigError(f"{origin}: unknown {what} '{prefix}{name}' (known: {known})")


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Parse/check `value` against the type hint of field `name`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(name, v, a) for v, a in zip(value, args))
        return [_coerce(name, v, args[0]) for v in value]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            if isinstance(value, str):
                f = float(value.replace("_", ""))
                if not f.is_integer():
                    raise ValueError
                return int(f)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
        raise ConfigError(f"{name}: expected {expected}, got {value!r}") from None
    raise TypeError(f"unsupported config type {hint} for {name}")  # internal bug


def _fail(name: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{name}: got {value!r}, expected {expected}")


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        _fail(name, value, "a positive number")


def _unit(name: str, value: float, closed_left: bool = True, closed_right: bool = True) -> None:
    lo_ok = value >= 0 if closed_left else value > 0
    hi_ok = value <= 1 if closed_right else value < 1
    if not (lo_ok and hi_ok):
        lo, hi = "[" if closed_left else "(", "]" if closed_right else ")"
        _fail(name, value, f"a number in {lo}0, 1{hi}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(name, value, "one of " + ", ".join(allowed))
