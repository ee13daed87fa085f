"""The layout of a training config: how many processes, how they split the model and the batch, and the settings
the memory and time estimates depend on. Read once from the composed config (``layout_of``); what follows from
those numbers (data-parallel size, micro-batches per step, ...) is a property, never a second copy.

A layout is built whatever rule the config breaks: a size that does not divide gives ``dp == 0`` or
``num_microbatches == 0`` (the rules in ``nemo_hs2.plan.rules`` say why)."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_hs2.plan.read import MISSING, get

BYTE_LEVEL_VOCAB = 259        # NeMo's ByteLevelTokenizer: 256 bytes + 3 special tokens
DISTRIBUTED_OPTIMIZERS = ("distributed_fused_adam", "mcore_distributed_optim")

# The JSON plan's "layout" object, in this order (examples/slurm/submit.sh reads nodes, gpus_per_node, tp, pp).
LAYOUT_KEYS = ("nodes", "gpus_per_node", "world", "tp", "pp", "vp", "cp", "dp", "micro_batch_size",
               "global_batch_size", "num_microbatches", "samples_are", "sequences_per_micro_batch", "seq_length",
               "sequence_parallel", "recompute", "recompute_method", "recompute_num_layers", "optimizer",
               "distributed_optimizer", "accelerator", "precision", "megatron_amp_O2", "attributes", "num_layers",
               "transformer_engine")


@dataclass(frozen=True)
class Layout:
    nodes: int
    gpus_per_node: int
    tp: int
    pp: int
    vp: int | None                 # virtual pipeline stages (model chunks) per rank; None: not interleaved
    cp: int
    micro_batch_size: int
    global_batch_size: int         # in samples: rows, or preference pairs
    preference: bool               # samples are preference pairs (two sequences each)
    seq_length: int
    sequence_parallel: bool
    recompute: str                 # none | selective | full (anything else breaks a rule)
    recompute_method: str | None
    recompute_num_layers: int | None
    optimizer: str
    accelerator: str
    precision: str
    megatron_amp_O2: bool
    attributes: int
    num_layers: int
    transformer_engine: bool

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def sizes_valid(self) -> bool:
        return self.tp >= 1 and self.pp >= 1 and self.cp >= 1

    @property
    def dp(self) -> int:
        """Data-parallel size; 0 when the world does not divide into TP x PP x CP."""
        split = self.tp * self.pp * self.cp
        return self.world // split if self.sizes_valid and self.world % split == 0 else 0

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per step and data-parallel rank; 0 when the global batch does not divide."""
        per_step = self.micro_batch_size * self.dp
        if not self.dp or self.micro_batch_size < 1 or self.global_batch_size % per_step:
            return 0
        return self.global_batch_size // per_step

    @property
    def samples_are(self) -> str:
        return "pairs" if self.preference else "rows"

    @property
    def sequences_per_micro_batch(self) -> int:
        return self.micro_batch_size * (2 if self.preference else 1)

    @property
    def distributed_optimizer(self) -> bool:
        return self.optimizer in DISTRIBUTED_OPTIMIZERS

    @property
    def on_gpu(self) -> bool:
        return self.accelerator in ("gpu", "cuda")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in LAYOUT_KEYS}


def layout_of(cfg) -> Layout:
    """The layout of a composed training config (raises only for a key that is not a number where one is needed)."""
    m, t = cfg.model, cfg.trainer
    vp = get(m, "virtual_pipeline_model_parallel_size")
    granularity = get(m, "activations_checkpoint_granularity")
    attributes = len(list(get(m.regression, "attributes", []) or [])) if "regression" in m else 1
    return Layout(
        nodes=int(get(t, "num_nodes", 1)), gpus_per_node=int(get(t, "devices", 1)),
        tp=int(m.tensor_model_parallel_size), pp=int(m.pipeline_model_parallel_size),
        vp=int(vp) if vp is not None else None, cp=int(get(m, "context_parallel_size", 1)),
        micro_batch_size=int(m.micro_batch_size), global_batch_size=int(m.global_batch_size),
        preference=get(cfg.data, "source") == "preference",
        seq_length=int(get(cfg.data, "seq_length", get(m, "encoder_seq_length", 0))),
        sequence_parallel=bool(get(m, "sequence_parallel", False)),
        recompute="none" if granularity is None else str(granularity),
        recompute_method=get(m, "activations_checkpoint_method"),
        recompute_num_layers=get(m, "activations_checkpoint_num_layers"),
        optimizer=str(get(get(m, "optim"), "name", "adamw")),
        accelerator=str(get(t, "accelerator", "cpu")), precision=str(get(t, "precision", "32")),
        megatron_amp_O2=bool(get(m, "megatron_amp_O2", False)), attributes=attributes,
        num_layers=int(m.num_layers), transformer_engine=bool(get(m, "transformer_engine", False)),
    )


# ------------------------------------------------------------------------------------------------ vocabulary


def vocab_padding(vocab: int, divisible_by: int, tp: int) -> int:
    """NeMo's MegatronBaseModel._vocab_size_with_padding."""
    multiple = divisible_by * tp
    return ((vocab + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class Vocab:
    """The tokenizer's vocabulary and the padded size NeMo allocates (a multiple of divisible_by x TP)."""
    size: int
    make_vocab_size_divisible_by: int
    tp: int

    @property
    def multiple(self) -> int:
        return self.make_vocab_size_divisible_by * self.tp

    @property
    def padded(self) -> int:
        return vocab_padding(self.size, self.make_vocab_size_divisible_by, self.tp)

    @property
    def dummy_rows(self) -> int:
        return self.padded - self.size

    def to_dict(self) -> dict:
        return {"size": self.size, "make_vocab_size_divisible_by": self.make_vocab_size_divisible_by,
                "multiple": self.multiple, "padded": self.padded, "dummy_rows": self.dummy_rows}


def tokenizer_vocab(m) -> int | None:
    """The vocabulary size a model config states (tokenizer.vocab_size, or the byte-level tokenizer's)."""
    tok = get(m, "tokenizer")
    if tok is None or tok is MISSING:
        return None
    size = get(tok, "vocab_size")
    if size is not None and size is not MISSING:
        return int(size)
    if get(tok, "library") == "byte-level":
        return BYTE_LEVEL_VOCAB
    return None


def vocab_of(cfg, layout: Layout) -> Vocab | None:
    """None when the size is unknown or the padding undefined (the vocabulary rule says which)."""
    divisible_by = int(get(cfg.model, "make_vocab_size_divisible_by", 128))
    size = tokenizer_vocab(cfg.model)
    if divisible_by < 1 or size is None or layout.tp < 1:
        return None
    return Vocab(size, divisible_by, layout.tp)
