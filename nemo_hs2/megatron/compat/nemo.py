"""Patches of NeMo behaviour needed on any hardware."""

from __future__ import annotations


from nemo_hs2.megatron.compat.registry import always, patch


@patch("hf-tokenizer-in-nemo", "nemo", "NeMo 2.1 saves a Hugging Face tokenizer as an absolute directory path, so a .nemo "
        "does not carry it; pack model.tokenizer.hf_files as artifacts (nemo_hs2.megatron.tokenizer)",
        always)
def _hf_tokenizer_in_nemo():
    from nemo.collections.nlp.models.language_modeling.megatron_base_model import MegatronBaseModel

    from nemo_hs2.megatron.tokenizer import materialize

    build_tokenizer = MegatronBaseModel._build_tokenizer

    def _build_tokenizer(self):
        materialize(self)
        return build_tokenizer(self)

    MegatronBaseModel._build_tokenizer = _build_tokenizer
