"""Reading a positional regression head by name: NVIDIA's published NeMo-Aligner reward models.

NeMo-Aligner's regression reward models (Nemotron-4-340B-Reward, Llama3-70B-SteerLM-RM, HelpSteer2-Preference
stage 1) have a 9-output head whose outputs are named by position only: ``ALIGNER_9SLOT``, of which the last five
(the HelpSteer2 attributes) were trained. ``head_layout`` names those outputs (a layout name, or a list with one
name per output, null for an output to leave unnamed); the model is then built with the checkpoint's head, loaded
strictly, and cut down to the attributes asked for, by name. From there it is an ordinary nemo_hs2 reward model:
it scores, serves, annotates and trains like one, and saves its attribute names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES, check_attributes

ALIGNER_9SLOT = ("quality", "toxicity", "humor", "creativity", *HELPSTEER2_ATTRIBUTES)
# layout -> (one name per head output, the attributes read when none are asked for: the trained ones)
LAYOUTS = {"aligner_9slot": (ALIGNER_9SLOT, HELPSTEER2_ATTRIBUTES)}


def resolve_layout(spec) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(output names, default attributes)`` for a layout name or an explicit list; None for no layout."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in LAYOUTS:
            raise ValueError(f"unknown head_layout '{spec}': use one of {sorted(LAYOUTS)} or a list with one "
                             "attribute name (or null) per head output")
        return LAYOUTS[spec]
    if not isinstance(spec, Sequence) or not spec:
        raise ValueError(f"head_layout must be a layout name or a non-empty list of names, got {spec!r}")
    names = [None if n is None else str(n) for n in spec]
    named = check_attributes([n for n in names if n is not None])
    # Unnamed outputs still need a name to build the head; these can never collide with a real one.
    return tuple(f"<unnamed output {i}>" if n is None else n for i, n in enumerate(names)), named


def head_attributes(saved_regression, path: str, spec, wanted: Sequence[str] | None):
    """``(names of the checkpoint head's outputs, the attributes the loaded model keeps)``, checked."""
    saved = saved_regression or {}
    saved_names = saved.get("attributes")
    layout = resolve_layout(spec)
    if layout is None:
        if not saved_names:
            raise ValueError(f"{path} has a {saved.get('num_attributes', 1)}-output head without attribute names "
                             "(a NeMo-Aligner regression reward model): name its outputs with "
                             "head_layout=aligner_9slot (NVIDIA's published reward models) or a list, one name "
                             "per output; or start a fresh head with init.mode=base")
        names = tuple(saved_names)
        if wanted and list(wanted) != list(names):
            raise ValueError(f"{path} predicts attributes {list(names)} but the config asks for {list(wanted)}: "
                             "set data.attributes to the checkpoint's, or use init.mode=base for a fresh head")
        return names, names
    names, default = layout
    if saved_names:
        raise ValueError(f"{path} already names its head outputs {list(saved_names)}: drop head_layout")
    outputs = int(saved.get("num_attributes", 1))
    if outputs != len(names):
        raise ValueError(f"head_layout has {len(names)} outputs but {path}'s head has {outputs} "
                         "(model.regression.num_attributes)")
    keep = check_attributes(wanted) if wanted else default
    missing = [a for a in keep if a not in names]
    if missing:
        raise ValueError(f"attributes {missing} are not in head_layout's outputs {[n for n in names if '<' not in n]}")
    return names, keep


def keep_head_outputs(model, keep: Sequence[str]) -> None:
    """Cut a freshly loaded model's head (outputs named ``model.attributes``) down to ``keep``, in that order."""
    index = [model.attributes.index(a) for a in keep]
    modules = model.model if isinstance(model.model, list) else [model.model]
    for module in modules:
        head = getattr(module, "rm_head", None)
        if head is None:  # not the last pipeline stage
            continue
        with torch.no_grad():  # in place: the Parameters keep Megatron's tensor-parallel attributes
            head.weight.data = head.weight.data[index].clone()
            if head.bias is not None:
                head.bias.data = head.bias.data[index].clone()
        head.output_size = len(index)
        head.attributes_weights = torch.full((len(index),), 1.0 / len(index))
    model.set_attributes(keep)
